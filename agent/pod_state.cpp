#include "pod_state.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <sstream>

#include <spdlog/spdlog.h>

#include "files.h"
#include "pod_netns.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace meshcap {

namespace {

// Flags longer than this (as JSON) go to a file beside the record, so that
// reading the record (cleanup, status) does not parse them unless asked.
constexpr size_t kInlineFlags = 4096;
// The flags file of pod NAME is NAME.json.flags-HASH (pod names hold no '.').
constexpr std::string_view kFlagsInfix = ".json.flags-";

std::string flags_prefix(const std::string& name) { return name + std::string(kFlagsInfix); }

// Writes `text` to `path` through a temporary file renamed into place
// (with the system calls themselves: an ofstream's set-up was half the time
// the agent spent on a pod's record).
void write_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0) throw std::runtime_error("cannot write " + tmp + ": " + std::strerror(errno));
  for (size_t done = 0; done < text.size();) {
    const ssize_t w = ::write(fd, text.data() + done, text.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      const int err = w < 0 ? errno : EIO;
      ::close(fd);
      ::unlink(tmp.c_str());
      throw std::runtime_error("cannot write " + tmp + ": " + std::strerror(err));
    }
    done += static_cast<size_t>(w);
  }
  if (::close(fd) != 0) throw std::runtime_error("cannot write " + tmp + ": " + std::strerror(errno));
  fs::rename(tmp, path);
}

// True when `file` may name the flags file of pod `name`: a name in the
// pods directory that starts with the pod's prefix.
bool own_flags_file(const std::string& name, const std::string& file) {
  return file.find('/') == std::string::npos && file.rfind(flags_prefix(name), 0) == 0;
}

// The flags file the record of pod `name` at `path` names ("" when none, or
// not the pod's own): read from the record, not by listing the directory,
// which holds every pod of the node.
std::string named_flags_file(const std::string& name, const std::string& path) {
  const auto text = read_whole_file(path);
  if (!text || text->find("\"flags_file\"") == std::string::npos) return "";
  try {
    const std::string file = json::parse(*text).value("flags_file", "");
    return own_flags_file(name, file) ? file : "";
  } catch (const std::exception&) {
    return "";
  }
}

}  // namespace

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
            {"flags", flags_path.empty() ? flags.to_json() : load_flags().to_json()},
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
    // Or the name of the file beside the record holding them (read_pod_state reads it).
    if (j.contains("flags") || !j.contains("flags_file")) {
      st.flags = FlagSet::from_json(j.at("flags"));
    } else {
      st.flags_path = j.at("flags_file").get<std::string>();
    }
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
  // Device and inode name one living namespace at a time: a recorded path
  // that has them names the only candidate, which is this pod's namespace
  // only when its cookie agrees (not a later one given the same number).
  if (auto id = loader::netns_identity(netns_path); id && id->same_namespace(netns)) {
    if (loader::names_namespace(netns_path, netns)) return netns_path;
    return std::nullopt;
  }
  return loader::find_netns(netns);
}

FlagSet PodState::load_flags() const {
  if (flags_path.empty()) return flags;
  const auto text = read_whole_file(flags_path);
  if (!text) throw std::runtime_error("cannot read " + flags_path);
  return FlagSet::from_json(json::parse(*text));
}

CaptureConfig PodState::config() const {
  FlagSet f;
  try {
    f = load_flags();
  } catch (const std::exception& e) {
    spdlog::warn("pod {}: recorded flags cannot be read ({}); cleaning up with defaults", name, e.what());
    return CaptureConfig{};
  }
  try {
    return f.build();
  } catch (const std::exception& e) {
    // The recorded flags no longer build here (a user removed since): what
    // cleanup needs beyond defaults is the TPROXY mark and table.
    spdlog::warn("pod {}: recorded flags do not build here ({}); cleaning up with defaults", name, e.what());
    CaptureConfig c;
    if (f.flags.tproxy_mark) c.tproxy_mark = *f.flags.tproxy_mark;
    if (f.flags.tproxy_route_table) c.tproxy_route_table = *f.flags.tproxy_route_table;
    return c;
  }
}

std::string state_root() {
  const char* dir = std::getenv("MESHCAP_STATE_DIR");
  return dir && *dir ? dir : "/run/meshcap";
}

std::string state_file(const std::string& name) { return state_root() + "/pods/" + name + ".json"; }

std::optional<PodState> read_pod_state(const std::string& name, bool with_flags) {
  const std::string path = state_file(name);
  const auto text = read_whole_file(path);
  if (!text) return std::nullopt;
  try {
    // Whole, then parsed: the parser reads a string several times faster than a stream.
    auto st = PodState::from_json(json::parse(*text));
    if (!st || st->flags_path.empty()) return st;
    // The flags are in a file of this pod's beside the record.
    const std::string file = st->flags_path;
    if (!own_flags_file(name, file)) throw std::runtime_error("its flags file " + file + " is not this pod's");
    st->flags_path = (fs::path(path).parent_path() / file).string();
    if (with_flags) {
      st->flags = st->load_flags();
      st->flags_path.clear();
    } else if (std::error_code ec; !fs::exists(st->flags_path, ec)) {
      throw std::runtime_error("its flags file " + file + " is missing");
    }
    return st;
  } catch (const std::exception& e) {
    spdlog::warn("ignoring unreadable {}: {}", path, e.what());
    return std::nullopt;
  }
}

void write_pod_state(const PodState& st) {
  const std::string path = state_file(st.name);
  std::error_code ec;
  fs::create_directories(fs::path(path).parent_path(), ec);
  const std::string before = named_flags_file(st.name, path);
  json j = st.to_json();
  std::string flags_file;
  if (std::string flags = j.at("flags").dump(); flags.size() > kInlineFlags) {
    // Named after its content: the record being replaced keeps naming a whole file.
    std::ostringstream name;
    name << flags_prefix(st.name) << std::hex << std::hash<std::string>{}(flags);
    flags_file = name.str();
    flags += "\n";
    write_atomically((fs::path(path).parent_path() / flags_file).string(), flags);
    j.erase("flags");
    j["flags_file"] = flags_file;
  }
  write_atomically(path, j.dump(2) + "\n");
  if (!before.empty() && before != flags_file) fs::remove(fs::path(path).parent_path() / before, ec);
}

bool remove_pod_state(const std::string& name) {
  std::error_code ec;
  const std::string path = state_file(name);
  const std::string flags_file = named_flags_file(name, path);
  const bool removed = fs::remove(path, ec);
  if (!flags_file.empty()) fs::remove(fs::path(path).parent_path() / flags_file, ec);
  return removed;
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
