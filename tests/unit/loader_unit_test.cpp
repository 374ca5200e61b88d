// The loader without the kernel: the skeleton opens and takes its settings,
// names are checked, tables generated from one list agree.
#include <gtest/gtest.h>

#include <set>

#include "datapath.h"
#include "istio_flags.h"
#include "kernel_features.h"
#include "meshcap.h"

namespace meshcap {
namespace {

CaptureConfig parse(std::vector<std::string> args) {
  return parse_capture_args(args, [](const std::string&) { return std::optional<std::string>(); });
}

TEST(LoaderUnit, SkeletonOpensWithItsSettingsWithoutTheKernel) {
  loader::DataPathSpec spec;
  spec.max_pods = 1000;
  spec.accelerate = true;
  EXPECT_NO_THROW(loader::DataPath dp(spec));
  EXPECT_EQ(spec.pods(), 1000u);
  EXPECT_EQ(loader::DataPathSpec{}.connections(), 16384u);
  (void)parse;
}

TEST(LoaderUnit, PodNames) {
  EXPECT_NO_THROW(loader::validate_pod_name("pod-1_a"));
  for (const std::string& bad : std::vector<std::string>{"", "a.b", "../x", "a/b", std::string(65, 'a'), "a b"})
    EXPECT_THROW(loader::validate_pod_name(bad), UsageError) << bad;
}

TEST(LoaderUnit, CounterNamesComeFromTheBpfTable) {
  EXPECT_EQ(loader::counter_names().size(), size_t(MC_CNT__MAX));
  EXPECT_EQ(loader::counter_names().front(), "redirected_outbound");
  EXPECT_EQ(loader::counter_names()[MC_CNT_IN_ASSIGN_FAIL], "in_assign_failed");
  EXPECT_EQ(loader::counter_names()[MC_CNT_ACCEL_TCP], "accel_tcp");
  std::set<std::string> unique(loader::counter_names().begin(), loader::counter_names().end());
  EXPECT_EQ(unique.size(), loader::counter_names().size());
}

TEST(LoaderUnit, FeatureNamesComeFromOneTable) {
  auto names = loader::feature_names();
  EXPECT_EQ(names.size(), loader::kFeatureCount);
  EXPECT_EQ(loader::feature_name(loader::Feature::prog_sk_lookup), std::string("prog_sk_lookup"));
  loader::FakeKernelFeatures k({"prog_connect"});
  EXPECT_TRUE(k.prog_connect());
  EXPECT_FALSE(k.prog_sockops());
  EXPECT_EQ(k.report().size(), loader::kFeatureCount);
}

}  // namespace
}  // namespace meshcap
