#include "pins.h"

#include <bpf/bpf.h>
#include <linux/magic.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include <spdlog/spdlog.h>

#include "capture_config.h"
#include "errors.h"

namespace fs = std::filesystem;

namespace meshcap::loader {

namespace {
constexpr const char* kBpffs = "/sys/fs/bpf";
}

LoaderError::LoaderError(std::string step, int err, const std::string& detail, Part part)
    : std::runtime_error(step + ": " + (detail.empty() ? "" : detail + ": ") + std::strerror(err < 0 ? -err : err)),
      step_(std::move(step)),
      err_(err < 0 ? -err : err),
      part_(part) {}

void fault_point(const std::string& step, Part part) {
  const char* at = std::getenv("MESHCAP_FAULT_AT");
  if (!at) return;
  std::string spec = at;  // STEP or STEP:kill
  bool kill_self = spec.size() > 5 && spec.substr(spec.size() - 5) == ":kill";
  if (kill_self) spec.resize(spec.size() - 5);
  if (spec != step) return;
  if (kill_self) raise(SIGKILL);
  throw LoaderError("injected fault at " + step, EIO, "", part);
}

std::string pin_root() {
  const char* dir = std::getenv("MESHCAP_PIN_DIR");
  return dir && *dir ? dir : "/sys/fs/bpf/meshcap";
}
std::string node_dir() { return pin_root() + "/node"; }
std::string pin_dir(const std::string& name) { return pin_root() + "/pods/" + name; }
std::string pod_pins(const std::string& datapath_dir, const std::string& name) {
  return datapath_dir + "/pods/" + name;
}
std::string staging_root() { return pin_root() + "_staging"; }

void validate_pod_name(const std::string& name) {
  // bpffs refuses '.' in names.
  bool ok = !name.empty() && name.size() <= 64;
  for (unsigned char c : name) ok = ok && (std::isalnum(c) || c == '_' || c == '-');
  if (!ok) throw UsageError("--name: invalid value '" + name + "': use 1-64 of letters, digits, '_', '-'");
}

void ensure_bpffs() {
  struct statfs st {};
  if (statfs(kBpffs, &st) == 0 && st.f_type == BPF_FS_MAGIC) return;
  // As bpftool does: mount the BPF filesystem where pins are expected.
  if (mount("bpf", kBpffs, "bpf", 0, "mode=0700")) throw LoaderError("mount bpffs at /sys/fs/bpf", errno);
  spdlog::info("mounted the BPF filesystem at {}", kBpffs);
}

void make_pin_dirs(const std::string& dir) {
  // Usually only the last directory is missing (a pod's below the data
  // path's): one mkdir.
  if (mkdir(dir.c_str(), 0700) == 0 || errno == EEXIST) return;
  ensure_bpffs();
  // `node stop` removes the pin root when it is empty, without the lock a
  // per-pod init does not take: a parent gone between two mkdirs is made again.
  for (int attempt = 0;; ++attempt) {
    std::string path;
    int err = 0;
    for (const auto& part : fs::path(dir)) {
      path = (fs::path(path) / part).string();
      if (path.size() <= std::strlen(kBpffs)) continue;
      if (mkdir(path.c_str(), 0700) && errno != EEXIST) {
        err = errno;
        break;
      }
    }
    if (err == 0) return;
    if (err != ENOENT || attempt == 2) throw LoaderError("create " + path, err);
  }
}

void remove_tree(const std::string& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) return;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string path = entry.path();
    if (entry.is_directory(ec)) {
      remove_tree(path);
      continue;
    }
    // A pinned link is detached explicitly: a process may still hold it.
    if (entry.path().filename().string().rfind("link_", 0) == 0) {
      int fd = bpf_obj_get(path.c_str());
      if (fd >= 0) {
        bpf_link_detach(fd);
        close(fd);
      }
    }
    if (unlink(path.c_str()) && errno != ENOENT) spdlog::warn("cannot remove pin {}: {}", path, std::strerror(errno));
  }
  if (rmdir(dir.c_str()) && errno != ENOENT) spdlog::warn("cannot remove {}: {}", dir, std::strerror(errno));
}

bool remove_dead_staging(const std::string& base) {
  bool removed = false;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(staging_root(), ec)) {
    const std::string f = e.path().filename();
    const size_t dash = base.empty() ? f.rfind('-') : base.size();
    if (dash == std::string::npos || dash == 0 || (!base.empty() && f.compare(0, dash, base) != 0) ||
        f.size() <= dash + 1 || f[dash] != '-' || f.size() > dash + 11 ||
        f.find_first_not_of("0123456789", dash + 1) != std::string::npos)
      continue;
    const pid_t pid = std::stoi(f.substr(dash + 1));
    if (pid == getpid() || kill(pid, 0) == 0) continue;  // still at work
    remove_tree(e.path());
    removed = true;
  }
  rmdir(staging_root().c_str());  // only when empty
  return removed;
}

void read_link_state(int fd, PinnedLink& l) {
  bpf_link_info info{};
  __u32 len = sizeof(info);
  l.attached = false;
  l.prog_id = 0;
  l.netns_ino = l.cgroup_id = 0;
  if (bpf_obj_get_info_by_fd(fd, &info, &len)) return;
  l.prog_id = info.prog_id;
  l.attached = (info.type == BPF_LINK_TYPE_CGROUP && info.cgroup.cgroup_id != 0) ||
               (info.type == BPF_LINK_TYPE_NETNS && info.netns.netns_ino != 0);
  if (info.type == BPF_LINK_TYPE_NETNS) l.netns_ino = info.netns.netns_ino;
  if (info.type == BPF_LINK_TYPE_CGROUP) l.cgroup_id = info.cgroup.cgroup_id;
}

std::vector<PinnedLink> pinned_links(const std::string& dir) {
  std::vector<PinnedLink> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string pin = e.path().filename();
    if (pin.rfind("link_", 0) != 0) continue;
    PinnedLink l{pin};
    const int fd = bpf_obj_get(e.path().c_str());
    if (fd >= 0) {
      read_link_state(fd, l);
      close(fd);
    }
    out.push_back(l);
  }
  std::sort(out.begin(), out.end(), [](const PinnedLink& a, const PinnedLink& b) { return a.pin < b.pin; });
  return out;
}

namespace {
std::vector<std::string> subdirs(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.is_directory(ec)) out.push_back(e.path().filename());
  std::sort(out.begin(), out.end());
  return out;
}
}  // namespace

std::vector<std::string> pinned_pods() { return subdirs(pin_root() + "/pods"); }
std::vector<std::string> enrolled_pins(const std::string& datapath_dir) { return subdirs(datapath_dir + "/pods"); }

}  // namespace meshcap::loader
