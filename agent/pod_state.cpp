#include "pod_state.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <spdlog/spdlog.h>

#include "files.h"
#include "pod_netns.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace meshcap {

std::vector<std::string> PodState::Iptables::save_binaries() const {
  std::vector<std::string> out;
  if (!ipv4_save.empty()) out.push_back(ipv4_save);
  if (!ipv6_save.empty()) out.push_back(ipv6_save);
  return out;
}

json PodState::to_json() const {
  json j = {{"version", kVersion},
            {"name", name},
            {"cgroup", cgroup},
            {"netns", {{"path", netns_path}, {"dev", netns.dev}, {"ino", netns.ino}, {"cookie", netns.cookie}}},
            {"flags", flags.to_json()},
            {"origin",
             {{"via", origin.via},
              {"container_id", origin.container_id},
              {"ifname", origin.ifname},
              {"k8s_namespace", origin.k8s_namespace},
              {"k8s_pod", origin.k8s_pod}}},
            {"plan", plan.to_json()}};
  if (ebpf)
    j["ebpf"] = {{"host", ebpf->host}, {"datapath", ebpf->datapath_dir}, {"index", ebpf->index}, {"cookie", ebpf->cookie}};
  if (iptables)
    j["iptables"] = {{"ipv4", iptables->ipv4_save}, {"ipv6", iptables->ipv6_save}, {"snapshot", iptables->snapshot}};
  return j;
}

std::optional<PodState> PodState::from_json(const json& j) {
  try {
    if (j.value("version", 0) != kVersion) {
      spdlog::warn("pod record of version {} (this meshcap reads {})", j.value("version", 0), kVersion);
      return std::nullopt;
    }
    PodState st;
    st.name = j.at("name");
    st.cgroup = j.value("cgroup", "");
    const auto& ns = j.at("netns");
    st.netns_path = ns.value("path", "");
    st.netns = {ns.value("dev", uint64_t{0}), ns.value("ino", uint64_t{0}), ns.value("cookie", uint64_t{0})};
    st.flags = FlagSet::from_json(j.at("flags"));
    if (j.contains("origin")) {
      const auto& o = j["origin"];
      st.origin = {o.value("via", "init"), o.value("container_id", ""), o.value("ifname", ""),
                   o.value("k8s_namespace", ""), o.value("k8s_pod", "")};
    }
    st.plan = Plan::from_json(j.at("plan"));
    if (j.contains("ebpf")) {
      const auto& e = j["ebpf"];
      st.ebpf = Ebpf{e.value("host", ""), e.value("datapath", ""), e.value("index", 0u), e.value("cookie", uint64_t{0})};
    }
    if (j.contains("iptables")) {
      const auto& i = j["iptables"];
      st.iptables = Iptables{i.value("ipv4", ""), i.value("ipv6", ""),
                             i.value("snapshot", std::vector<std::string>{})};
    }
    return st;
  } catch (const std::exception& e) {
    spdlog::warn("unreadable pod record: {}", e.what());
    return std::nullopt;
  }
}

std::optional<std::string> PodState::current_netns() const {
  if (auto id = loader::netns_identity(netns_path); id && id->same_namespace(netns)) return netns_path;
  return loader::find_netns(netns);
}

CaptureConfig PodState::config() const {
  try {
    return flags.build();
  } catch (const std::exception& e) {
    // The recorded flags no longer build here (a user removed since): what
    // cleanup needs beyond defaults is the TPROXY mark and table.
    spdlog::warn("pod {}: recorded flags do not build here ({}); cleaning up with defaults", name, e.what());
    CaptureConfig c;
    if (flags.flags.tproxy_mark) c.tproxy_mark = *flags.flags.tproxy_mark;
    if (flags.flags.tproxy_route_table) c.tproxy_route_table = *flags.flags.tproxy_route_table;
    return c;
  }
}

std::string state_root() {
  const char* dir = std::getenv("MESHCAP_STATE_DIR");
  return dir && *dir ? dir : "/run/meshcap";
}

std::string state_file(const std::string& name) { return state_root() + "/pods/" + name + ".json"; }

std::optional<PodState> read_pod_state(const std::string& name) {
  const auto text = read_whole_file(state_file(name));
  if (!text) return std::nullopt;
  try {
    // Whole, then parsed: the parser reads a string several times faster than a stream.
    return PodState::from_json(json::parse(*text));
  } catch (const std::exception&) {
    spdlog::warn("ignoring unreadable {}", state_file(name));
    return std::nullopt;
  }
}

void write_pod_state(const PodState& st) {
  const std::string path = state_file(st.name);
  std::error_code ec;
  fs::create_directories(fs::path(path).parent_path(), ec);
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << st.to_json().dump(2) << "\n";
    if (!out) throw std::runtime_error("cannot write " + tmp);
  }
  fs::rename(tmp, path);
}

bool remove_pod_state(const std::string& name) {
  std::error_code ec;
  return fs::remove(state_file(name), ec);
}

std::vector<std::string> recorded_pods() {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(state_root() + "/pods", ec)) {
    std::string f = e.path().filename();
    if (f.size() > 5 && f.substr(f.size() - 5) == ".json") out.push_back(f.substr(0, f.size() - 5));
  }
  return out;
}

}  // namespace meshcap
