#include "target.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <linux/nsfs.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <mutex>

#include "capture_config.h"
#include "pins.h"
#include "kernel_features.h"
#include "pod_netns.h"

namespace meshcap {

std::optional<std::string> cgroup2_mount() {
  // Read from /proc/self/mountinfo once per process (the agent asks for
  // every pod it answers: 0.1 ms each here), and checked at every ask to
  // be a cgroup v2 mount still; read again when it is not.
  static std::mutex mutex;
  static std::optional<std::string> found;
  std::lock_guard<std::mutex> lock(mutex);
  struct statfs st {};
  if (found && statfs(found->c_str(), &st) == 0 && st.f_type == CGROUP2_SUPER_MAGIC) return found;
  found = loader::find_cgroup2_mount();
  return found;
}

std::string resolve_netns(const std::string& given, NetnsId* id) {
  std::string path = given.empty() ? "/proc/self/ns/net"
                     : given.find('/') == std::string::npos ? "/run/netns/" + given
                                                            : given;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    throw UsageError("--netns: invalid value '" + given + "': cannot open " + path + ": " + std::strerror(errno));
  int type = ioctl(fd, NS_GET_NSTYPE);
  struct stat st {};
  if (id && type == CLONE_NEWNET && fstat(fd, &st) == 0)
    *id = NetnsId{static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino), 0};
  close(fd);
  if (type != CLONE_NEWNET)
    throw UsageError("--netns: invalid value '" + given + "': " + path + " is not a network namespace");
  return path;
}

std::string validate_cgroup(const std::string& dir) {
  const std::string flag = "--cgroup: invalid value '" + dir + "': ";
  if (dir.empty() || dir[0] != '/') throw UsageError(flag + "expected an absolute path");
  struct statfs sfs {};
  if (statfs(dir.c_str(), &sfs)) throw UsageError(flag + std::strerror(errno));
  if (sfs.f_type != CGROUP2_SUPER_MAGIC) throw UsageError(flag + "not a cgroup v2 directory");
  struct stat self {}, parent {};
  if (stat(dir.c_str(), &self) || !S_ISDIR(self.st_mode)) throw UsageError(flag + "not a directory");
  std::string up = dir + "/..";
  if (stat(up.c_str(), &parent) || parent.st_dev != self.st_dev || parent.st_ino == self.st_ino)
    throw UsageError(flag + "the root of the cgroup hierarchy; meshcap attaches only to a pod's own cgroup");
  return std::filesystem::weakly_canonical(dir).string();
}

PodTarget resolve_target(const std::string& name, const std::string& cgroup, const std::string& netns) {
  PodTarget t;
  t.netns_path = resolve_netns(netns, &t.netns);
  if (!cgroup.empty()) t.cgroup_dir = validate_cgroup(cgroup);
  if (!name.empty()) {
    loader::validate_pod_name(name);
    t.name = name;
  } else if (!t.cgroup_dir.empty()) {
    struct stat cg {};
    stat(t.cgroup_dir.c_str(), &cg);
    t.name = "cg" + std::to_string(cg.st_ino) + "-ns" + std::to_string(t.netns.ino);
  } else {
    t.name = "ns" + std::to_string(t.netns.ino);
  }
  return t;
}

}  // namespace meshcap
