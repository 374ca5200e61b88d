// Init times on fresh pods: applying capture, adding one exclusion to it,
// removing it; eBPF (meshcap init) against istio's iptables-restore.
#include <arpa/inet.h>
#include <bpf/bpf.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <sstream>

#include <spdlog/spdlog.h>

#include "meshcap.h"
#include "phases.h"
#include "pins.h"
#include "run_control.h"
#include "support/common.h"

namespace meshcap::bench {

namespace {

using Clock = std::chrono::steady_clock;

struct InitCapture {
  std::string label;  // what the report calls it
  Capture capture;
  bool via_meshcap;  // iptables through `meshcap init --mode iptables`
};

// The cidrs4 key the data path reads for extra_exclusion_cidr() as an
// exclusion (-x) of a pod's own data path (its one pod, index 0).
mc_lpm4 extra_exclusion_key() {
  const std::string cidr = extra_exclusion_cidr();
  mc_lpm4 key{};
  key.prefixlen = 32 + 24;
  key.tag = MC_LPM_TAG(0u, MC_CIDR_EXCLUDE);
  in_addr a{};
  ::inet_pton(AF_INET, cidr.substr(0, cidr.find('/')).c_str(), &a);
  key.addr = a.s_addr;
  return key;
}

// eBPF: one map update on the pod's pinned cidrs4 trie.
double add_one_exclusion_ebpf(Rig& rig, std::string& how) {
  how = "bpf_map_update_elem on the pinned cidrs4 (the pod's -x)";
  const std::string pin = loader::pin_dir(rig.name()) + "/map_cidrs4";
  const test::UniqueFd fd(::bpf_obj_get(pin.c_str()));
  if (!fd) throw std::runtime_error("bpf_obj_get " + pin + ": " + std::strerror(errno));
  const mc_lpm4 key = extra_exclusion_key();
  const uint8_t one = 1;
  const auto t0 = Clock::now();
  const int rc = ::bpf_map_update_elem(fd.get(), &key, &one, BPF_ANY);
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  if (rc != 0) throw std::runtime_error("bpf_map_update_elem: " + std::string(std::strerror(errno)));
  return s;
}

// iptables: one rule inserted after istio's fixed ISTIO_OUTPUT rules.
double add_one_exclusion(Rig& rig, const InitCapture& ic, std::string& how, int insert_pos) {
  if (ic.capture == Capture::ebpf) return add_one_exclusion_ebpf(rig, how);
  const std::string bin = ic.capture == Capture::legacy ? "iptables-legacy" : "iptables-nft";
  const std::string cidr = extra_exclusion_cidr();
  how = bin + " -t nat -I ISTIO_OUTPUT " + std::to_string(insert_pos) + " -d " + cidr + " -j RETURN";
  const Timed t = run_timed(
      {bin, "-w", "-t", "nat", "-I", "ISTIO_OUTPUT", std::to_string(insert_pos), "-d", cidr, "-j", "RETURN"}, "",
      rig.pod().pod_netns_path());
  if (!t.ok()) throw std::runtime_error(how + ": " + t.output);
  return t.seconds;
}

// Takes the added exclusion out again (untimed), so that cleanup removes
// what the apply made, as for a pod nobody touched by hand.
void remove_one_exclusion(Rig& rig, const InitCapture& ic) {
  const std::string cidr = extra_exclusion_cidr();
  if (ic.capture == Capture::ebpf) {
    const test::UniqueFd fd(::bpf_obj_get((loader::pin_dir(rig.name()) + "/map_cidrs4").c_str()));
    const mc_lpm4 key = extra_exclusion_key();
    if (!fd || ::bpf_map_delete_elem(fd.get(), &key) != 0)
      throw std::runtime_error("removing the added exclusion: " + std::string(std::strerror(errno)));
    return;
  }
  const std::string bin = ic.capture == Capture::legacy ? "iptables-legacy" : "iptables-nft";
  const Timed t = run_timed({bin, "-w", "-t", "nat", "-D", "ISTIO_OUTPUT", "-d", cidr, "-j", "RETURN"}, "",
                            rig.pod().pod_netns_path());
  if (!t.ok()) throw std::runtime_error("removing the added exclusion: " + t.output);
}

std::vector<InitCapture> init_captures(const Profile& p, bool meshcap_iptables) {
  std::vector<InitCapture> caps = {{"ebpf", Capture::ebpf, false}, {"iptables-nft", Capture::nft, false}};
  if (p.legacy) caps.push_back({"iptables-legacy", Capture::legacy, false});
  if (meshcap_iptables) {
    caps.push_back({"iptables-nft (meshcap)", Capture::nft, true});
    if (p.legacy) caps.push_back({"iptables-legacy (meshcap)", Capture::legacy, true});
  }
  return caps;
}

// Position of the first exclusion in ISTIO_OUTPUT: after istio's fixed rules.
int first_exclusion_position() {
  int pos = 0;
  std::istringstream in(istio_payload({}));
  for (std::string line; std::getline(in, line);) pos += line.rfind("-A ISTIO_OUTPUT ", 0) == 0;
  return pos;
}

// One repetition on a fresh pod: apply, add one, clean up.
void time_one(Bench& b, const InitCapture& ic, size_t size, int insert_pos, InitRecord& rec) {
  RigOptions o = b.ro;
  o.meshcap_iptables = ic.via_meshcap;
  rec.capture = ic.label;
  rec.exclusions = size;
  rec.how = ic.capture == Capture::ebpf || ic.via_meshcap ? "meshcap init"
            : ic.capture == Capture::legacy              ? "iptables-legacy-restore + ip6tables-legacy-restore"
                                                         : "iptables-nft-restore + ip6tables-nft-restore";
  try {
    Rig rig("init-" + ic.label, ic.capture, Sidecar::bare, o);
    b.track(rig);
    rec.apply_s.push_back(rig.apply(exclusion_cidrs(size)));
    rec.add_one_s.push_back(add_one_exclusion(rig, ic, rec.add_how, insert_pos));
    remove_one_exclusion(rig, ic);
    rec.cleanup_s.push_back(rig.remove());
  } catch (const Interrupted&) {
    throw;
  } catch (const std::exception& e) {
    b.res.notes.push_back("init " + ic.label + " with " + std::to_string(size) + ": " + e.what());
    spdlog::warn("init {} with {}: {}", ic.label, size, e.what());
  }
}

}  // namespace

void run_init_phase(Bench& b) {
  const Profile& p = b.profile();
  if (b.opt.no_init || p.init_sizes.empty()) return;
  const auto caps = init_captures(p, b.ro.meshcap_iptables);
  const int insert_pos = first_exclusion_position();
  std::vector<std::pair<size_t, size_t>> jobs;  // (capture, size)
  for (int rep = 0; rep < p.init_reps; rep++)
    for (size_t c = 0; c < caps.size(); c++)
      for (size_t s : p.init_sizes) jobs.push_back({c, s});
  std::shuffle(jobs.begin(), jobs.end(), b.rng);
  std::map<std::pair<size_t, size_t>, InitRecord> recs;
  const auto t0 = Clock::now();
  for (const auto& j : jobs) {
    check_stop();
    time_one(b, caps[j.first], j.second, insert_pos, recs[j]);
  }
  for (auto& [k, v] : recs) b.res.init.push_back(v);
  std::sort(b.res.init.begin(), b.res.init.end(), [](const InitRecord& x, const InitRecord& y) {
    return std::tie(x.capture, x.exclusions) < std::tie(y.capture, y.exclusions);
  });
  spdlog::info("init phase: {} jobs in {:.0f} s", jobs.size(), std::chrono::duration<double>(Clock::now() - t0).count());
}

}  // namespace meshcap::bench
