// Recording listeners for the equivalence suite: one child process (placed
// with the test-pod harness, in the pod's cgroup and netns, or in the peer's
// netns) hosting many TCP and UDP listeners. Each client sends a unique tag
// as its first line; the listener records, per tag, which listener took the
// connection, its peer and local address and what SO_ORIGINAL_DST says, then
// echoes the line. Tags make the match between a client connection and the
// listener that received it exact, whatever the ports and however many
// connections run.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "support/test_support.h"

namespace meshcap::test::eq {

struct ListenSpec {
  bool udp = false;
  std::string ip;  ///< "0.0.0.0", "::" (IPv6 only: V6ONLY is set)
  uint16_t port = 0;
  std::string str() const;  ///< "tcp 0.0.0.0:15001"
};

/// What one listener saw of one tagged connection or datagram.
struct TagRecord {
  std::string server;  ///< the TaggedServer's name ("proxy", "pod-app", "peer")
  ListenSpec listener;
  std::string peer;      ///< getpeername of the accepted socket / datagram source
  std::string local;     ///< getsockname of the accepted socket; for UDP the datagram's destination (pktinfo)
  bool orig_ok = false;  ///< SO_ORIGINAL_DST answered (TCP only)
  std::string orig_dst;  ///< its answer when orig_ok
  int orig_errno = 0;    ///< errno when not
};

/// Records of all servers, by tag.
class TagStore {
 public:
  void add(const std::string& tag, TagRecord r);
  /// Waits until every tag has at least one record, or the timeout.
  bool wait_for(const std::vector<std::string>& tags, std::chrono::milliseconds timeout) const;
  std::vector<TagRecord> get(const std::string& tag) const;

 private:
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::map<std::string, std::vector<TagRecord>> records_;
};

class TaggedServer {
 public:
  enum class Where { pod, peer };
  /// Starts the child and waits until every listener is bound; throws
  /// TestSupportError naming the listener otherwise. Create from the test's
  /// main thread; destroy before the pod.
  TaggedServer(TestPod& pod, Where where, Identity id, std::string name, std::vector<ListenSpec> specs,
               TagStore& store);
  ~TaggedServer();
  TaggedServer(const TaggedServer&) = delete;
  TaggedServer& operator=(const TaggedServer&) = delete;

  pid_t pid() const { return pid_; }
  void stop();

 private:
  TestPod& pod_;
  std::string name_;
  std::vector<ListenSpec> specs_;
  TagStore& store_;
  pid_t pid_ = -1;
  std::thread reader_;
  bool stopped_ = false;
};

}  // namespace meshcap::test::eq
