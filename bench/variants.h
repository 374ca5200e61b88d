// The variants (ways of reaching the upstream server) and the pods they
// run in.
#pragma once

#include <string>
#include <vector>

#include "options.h"
#include "results.h"
#include "rig.h"

namespace meshcap::bench {

/// A pod to build: its key (VariantDef::rig), label, capture and sidecar.
struct RigDef {
  std::string key, label;
  Capture capture;
  Sidecar sidecar;
  bool connect_only = false;
  bool accelerate = false;
};

/// The pods and variants of a profile.
void define_variants(const Profile& p, std::vector<RigDef>& rigs, std::vector<VariantDef>& vs);

/// Checks with the probe that the variant's connections land where they
/// must; "" when they do, else what went wrong.
std::string verify_variant(Rig& rig, const VariantDef& v);

}  // namespace meshcap::bench
