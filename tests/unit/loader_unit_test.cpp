// The loader without the kernel: the skeleton opens, unsupported
// configurations are named, names are checked.
#include <gtest/gtest.h>

#include <map>

#include "bpf_capture.h"
#include "meshcap.h"
#include "istio_flags.h"

namespace meshcap {
namespace {

CaptureConfig parse(std::vector<std::string> args) {
  return parse_capture_args(args, [](const std::string&) { return std::optional<std::string>(); });
}

TEST(LoaderUnit, SkeletonOpensAndConfiguresWithoutTheKernel) {
  loader::BpfCapture capture;
  EXPECT_NO_THROW(capture.configure(parse({"-i", "*", "-u", "1337", "-g", "1337"}), loader::PodNetwork{}));
}

TEST(LoaderUnit, NamesWhatEbpfCannotHonour) {
  EXPECT_TRUE(loader::ebpf_unsupported(parse({"-i", "*", "-x", "10.0.0.0/8", "-q", "80", "-o", "22", "-c", "eth1",
                                              "-b", "*", "-d", "15090", "-k", "eth2"}))
                  .empty());
  auto why = loader::ebpf_unsupported(
      parse({"--redirect-dns", "--dns-servers", "1.1.1.1", "--drop-invalid", "-b", "*", "-m", "TPROXY"}));
  ASSERT_EQ(why.size(), 3u);
  EXPECT_NE(why[0].find("--redirect-dns"), std::string::npos);
  EXPECT_NE(why[1].find("TPROXY"), std::string::npos);
  EXPECT_NE(why[2].find("--drop-invalid"), std::string::npos);
  // TPROXY concerns inbound only: without inbound capture it is no reason.
  EXPECT_TRUE(loader::ebpf_unsupported(parse({"-m", "TPROXY"})).empty());
  EXPECT_FALSE(loader::ebpf_unsupported(parse({"-u", "no-such-user-here"})).empty());

  loader::BpfCapture capture;
  EXPECT_THROW(capture.configure(parse({"--redirect-dns", "--dns-servers", ""}), loader::PodNetwork{}), UsageError);
  // An interface the pod does not have.
  EXPECT_THROW(capture.configure(parse({"-c", "eth1"}), loader::PodNetwork{}), UsageError);
}

TEST(LoaderUnit, PodNames) {
  EXPECT_NO_THROW(loader::validate_pod_name("pod-1_a"));
  for (const std::string& bad : std::vector<std::string>{"", "a.b", "../x", "a/b", std::string(65, 'a'), "a b"})
    EXPECT_THROW(loader::validate_pod_name(bad), UsageError) << bad;
}

TEST(LoaderUnit, CounterNamesMatchTheBpfEnum) {
  EXPECT_EQ(loader::counter_names().size(), size_t(MC_CNT__MAX));
  EXPECT_EQ(loader::counter_names().front(), "redirected_outbound");
  EXPECT_EQ(loader::counter_names()[MC_CNT_IN_ASSIGN_FAIL], "in_assign_failed");
  EXPECT_EQ(loader::counter_names()[MC_CNT_ACCEL_TCP], "accel_tcp");
}

}  // namespace
}  // namespace meshcap
