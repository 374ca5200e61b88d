// loader::read_pod_network reads a namespace's interfaces, addresses and
// routes by rtnetlink. These tests hold it to what the kernel's own views
// say of the same namespace: getifaddrs for the interfaces and addresses,
// /proc/net/route and /proc/net/ipv6_route for the routes (the files it
// read before), on a namespace with more than a pod usually has: a second
// interface, an address with a label, IPv6, a blackhole, another table,
// multipath routes in both families. And in_network_namespace, which keeps
// the thread's own namespace open between calls, brings the thread back,
// also from a nested call and from a job that throws; and a namespace's
// identity: device, inode and, where the kernel tells it, cookie. Label:
// kernel.
#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sched.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "errors.h"
#include "pod_netns.h"
#include "support/netns.h"
#include "support/netns_fleet.h"
#include "support/test_support.h"

namespace meshcap::test {
namespace {

using Route = std::tuple<std::string, int, std::string>;  // prefix, length, interface

std::string text(const PodAddress& a) {
  char buf[INET6_ADDRSTRLEN] = {};
  inet_ntop(a.family, a.addr.data(), buf, sizeof buf);
  return buf;
}

// The routes as the /proc files list them, read by the calling thread
// (inside the namespace): IPv4 from the main table, IPv6 from every table
// but those through lo.
std::vector<Route> proc_routes(std::string* default4, std::string* default6) {
  std::vector<Route> out;
  std::ifstream in4("/proc/thread-self/net/route");
  std::string line;
  std::getline(in4, line);
  while (std::getline(in4, line)) {
    std::istringstream w(line);
    std::string iface, dst, gw, flags, ref, use, metric, mask;
    if (!(w >> iface >> dst >> gw >> flags >> ref >> use >> metric >> mask)) continue;
    const uint32_t d = static_cast<uint32_t>(std::stoul(dst, nullptr, 16));
    const uint32_t m = static_cast<uint32_t>(std::stoul(mask, nullptr, 16));
    if (d == 0 && m == 0 && default4->empty()) *default4 = iface;
    PodAddress a;
    a.family = AF_INET;
    std::memcpy(a.addr.data(), &d, 4);
    out.emplace_back(text(a), __builtin_popcount(m), iface);
  }
  std::ifstream in6("/proc/thread-self/net/ipv6_route");
  while (std::getline(in6, line)) {
    std::istringstream w(line);
    std::string dst, dst_len, src, src_len, hop, metric, ref, use, flags, iface;
    if (!(w >> dst >> dst_len >> src >> src_len >> hop >> metric >> ref >> use >> flags >> iface)) continue;
    if (dst.size() != 32 || iface == "lo") continue;
    if (dst == std::string(32, '0') && dst_len == "00" && default6->empty()) *default6 = iface;
    PodAddress a;
    a.family = AF_INET6;
    for (int i = 0; i < 16; i++) a.addr[i] = static_cast<uint8_t>(std::stoul(dst.substr(2 * i, 2), nullptr, 16));
    out.emplace_back(text(a), static_cast<int>(std::stoul(dst_len, nullptr, 16)), iface);
  }
  return out;
}

struct Seen {
  std::vector<Route> routes;
  std::string default4, default6;
  std::vector<std::string> addresses;  // "family address", getifaddrs' order
  std::vector<std::pair<std::string, uint32_t>> interfaces;
  uint64_t cookie = 0;
};

Seen what_the_kernel_shows() {
  Seen s;
  s.routes = proc_routes(&s.default4, &s.default6);
  ifaddrs* list = nullptr;
  if (getifaddrs(&list)) throw std::runtime_error("getifaddrs failed");
  for (auto* i = list; i; i = i->ifa_next) {
    if (i->ifa_addr && i->ifa_addr->sa_family == AF_PACKET) {
      s.interfaces.emplace_back(i->ifa_name, reinterpret_cast<const sockaddr_ll*>(i->ifa_addr)->sll_ifindex);
      continue;
    }
    if (!i->ifa_addr || (i->ifa_addr->sa_family != AF_INET && i->ifa_addr->sa_family != AF_INET6)) continue;
    PodAddress a;
    a.family = i->ifa_addr->sa_family;
    if (a.family == AF_INET)
      std::memcpy(a.addr.data(), &reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr, 4);
    else
      std::memcpy(a.addr.data(), &reinterpret_cast<sockaddr_in6*>(i->ifa_addr)->sin6_addr, 16);
    s.addresses.push_back(text(a));
  }
  freeifaddrs(list);
  const int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  socklen_t len = sizeof s.cookie;
  if (fd >= 0) (void)getsockopt(fd, SOL_SOCKET, 71 /* SO_NETNS_COOKIE */, &s.cookie, &len);
  if (fd >= 0) close(fd);
  return s;
}

void ip(const std::string& netns, std::vector<std::string> args) {
  args.insert(args.begin(), "ip");
  call_in_netns(netns, [&] { run_command_checked(args); });
}

std::string own_netns() {
  struct stat st {};
  EXPECT_EQ(stat("/proc/thread-self/ns/net", &st), 0);
  return std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
}

TEST(PodNetns, ReadsWhatTheKernelsOwnViewsShow) {
  NetnsFleet fleet(1);
  const std::string ns = fleet.path(0);
  // A second interface (a veth with both ends here), an address with a
  // label, IPv6 on both, routes of every kind the files list.
  ip(ns, {"link", "add", "a1", "type", "veth", "peer", "name", "a2"});
  ip(ns, {"link", "set", "a1", "up"});
  ip(ns, {"link", "set", "a2", "up"});
  ip(ns, {"addr", "add", "10.30.0.1/24", "dev", "a1"});
  ip(ns, {"addr", "add", "10.30.0.9/24", "dev", "a1", "label", "a1:x"});
  ip(ns, {"-6", "addr", "add", "fd00:224::2/64", "dev", "eth0", "nodad"});
  ip(ns, {"-6", "addr", "add", "fd00:30::1/64", "dev", "a1", "nodad"});
  ip(ns, {"route", "add", "10.40.0.0/16", "dev", "a1"});
  ip(ns, {"route", "add", "blackhole", "10.50.0.0/16"});
  ip(ns, {"route", "add", "10.60.0.0/16", "dev", "a1", "table", "100"});
  ip(ns, {"route", "add", "10.70.0.0/16", "nexthop", "via", "10.30.0.5", "dev", "a1", "nexthop", "via",
          fleet.hub_ipv4(0), "dev", "eth0"});
  ip(ns, {"-6", "route", "add", "default", "via", "fd00:224::1", "dev", "eth0"});
  ip(ns, {"-6", "route", "add", "fd00:70::/64", "nexthop", "via", "fe80::1", "dev", "a1", "nexthop", "via",
          "fe80::2", "dev", "eth0"});
  ip(ns, {"-6", "route", "add", "fd00:80::/64", "dev", "a1", "table", "100"});
  ip(ns, {"-6", "route", "add", "unreachable", "fd00:90::/64"});

  const std::string home = own_netns();
  const PodNetwork got = loader::read_pod_network(ns);
  EXPECT_EQ(own_netns(), home) << "the thread came back";
  const Seen want = call_in_netns(ns, [] { return what_the_kernel_shows(); });

  std::vector<Route> routes;
  for (const auto& r : got.routes) routes.emplace_back(text(r.prefix), r.prefix_len, r.interface);
  EXPECT_EQ(routes, want.routes);
  // The cases the namespace was built for are in both.
  EXPECT_NE(std::find(routes.begin(), routes.end(), Route{"10.50.0.0", 16, "*"}), routes.end());
  EXPECT_NE(std::find(routes.begin(), routes.end(), Route{"10.70.0.0", 16, "a1"}), routes.end());
  EXPECT_NE(std::find(routes.begin(), routes.end(), Route{"fd00:70::", 64, "eth0"}), routes.end());
  EXPECT_NE(std::find(routes.begin(), routes.end(), Route{"fd00:80::", 64, "a1"}), routes.end());
  EXPECT_EQ(std::find(routes.begin(), routes.end(), Route{"10.60.0.0", 16, "a1"}), routes.end());

  std::vector<std::string> addresses;
  for (const auto& a : got.addresses) addresses.push_back(text(a));
  EXPECT_EQ(addresses, want.addresses);
  auto interfaces = want.interfaces;
  std::sort(interfaces.begin(), interfaces.end());
  const std::vector<std::pair<std::string, uint32_t>> got_interfaces(got.interfaces.begin(), got.interfaces.end());
  EXPECT_EQ(got_interfaces, interfaces);
  // The source a connection leaving the pod gets: the default routes' interface.
  EXPECT_EQ(want.default4, "eth0");
  EXPECT_EQ(want.default6, "eth0");
  ASSERT_TRUE(got.source4 && got.source6);
  EXPECT_EQ(text(*got.source4), fleet.pod_ipv4(0));
  EXPECT_EQ(text(*got.source6), "fd00:224::2");
  EXPECT_EQ(got.netns.cookie, want.cookie) << "0 on a kernel without SO_NETNS_COOKIE (before 5.14)";
  ASSERT_TRUE(got.listening.has_value());
  EXPECT_TRUE(got.listening->empty());
  // A listener in each family shows; a socket bound but not listening does not.
  const auto listener = [](int family, uint16_t port, bool listen_too) {
    const int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in6 a6{};
    sockaddr_in a4{};
    a4.sin_family = AF_INET;
    a4.sin_port = htons(port);
    a6.sin6_family = AF_INET6;
    a6.sin6_port = htons(port);
    const int one = 1;
    if (family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    const bool ok = family == AF_INET ? bind(fd, reinterpret_cast<sockaddr*>(&a4), sizeof a4) == 0
                                      : bind(fd, reinterpret_cast<sockaddr*>(&a6), sizeof a6) == 0;
    if (!ok || (listen_too && listen(fd, 1))) throw std::runtime_error("cannot bind or listen");
    return UniqueFd(fd);
  };
  const std::vector<UniqueFd> sockets = call_in_netns(ns, [&] {
    std::vector<UniqueFd> v;
    v.push_back(listener(AF_INET, 15006, true));
    v.push_back(listener(AF_INET6, 15001, true));
    v.push_back(listener(AF_INET, 15090, false));
    return v;
  });
  const PodNetwork again = loader::read_pod_network(ns);
  ASSERT_TRUE(again.listening.has_value());
  EXPECT_EQ(*again.listening, (std::set<uint16_t>{15001, 15006}));
}

TEST(PodNetns, EveryCallComesBackNestedOrThrowingAndAForkedChildKeepsItsOwn) {
  NetnsFleet fleet(2);
  const std::string home = own_netns();
  const std::string a = call_in_netns(fleet.path(0), [] { return own_netns(); });
  const std::string b = call_in_netns(fleet.path(1), [] { return own_netns(); });
  ASSERT_NE(a, home);
  ASSERT_NE(b, a);
  for (int round = 0; round < 3; ++round) {
    std::string in_a, in_b, back_in_a;
    loader::in_network_namespace(fleet.path(0), [&] {
      in_a = own_netns();
      loader::in_network_namespace(fleet.path(1), [&] { in_b = own_netns(); });
      back_in_a = own_netns();
    });
    EXPECT_EQ(in_a, a);
    EXPECT_EQ(in_b, b);
    EXPECT_EQ(back_in_a, a) << "a nested call comes back to its caller's namespace";
    EXPECT_EQ(own_netns(), home);
    EXPECT_THROW(loader::in_network_namespace(fleet.path(1), [] { throw std::runtime_error("job failed"); }),
                 std::runtime_error);
    EXPECT_EQ(own_netns(), home);
    // The namespace one is already in: the job runs there, nothing moves.
    std::string same;
    loader::in_network_namespace("/proc/thread-self/ns/net", [&] { same = own_netns(); });
    EXPECT_EQ(same, home);
  }
  EXPECT_THROW(loader::in_network_namespace("/nonexistent/ns", [] {}), loader::LoaderError);
  EXPECT_EQ(own_netns(), home);
  // A child forked from a thread that had used it, moved into namespace A
  // by other means: its own calls come back to A, not to the parent's.
  int report[2];
  ASSERT_EQ(pipe(report), 0);
  const pid_t child = fork();
  if (child == 0) {
    close(report[0]);
    const int fd = open(fleet.path(0).c_str(), O_RDONLY | O_CLOEXEC);
    char ok = 'n';
    if (fd >= 0 && setns(fd, CLONE_NEWNET) == 0) {
      try {
        std::string inside;
        loader::in_network_namespace(fleet.path(1), [&] { inside = own_netns(); });
        if (inside == b && own_netns() == a) ok = 'y';
      } catch (...) {
      }
    }
    (void)!write(report[1], &ok, 1);
    _exit(0);
  }
  close(report[1]);
  char ok = 0;
  EXPECT_EQ(read(report[0], &ok, 1), 1);
  close(report[0]);
  int status = 0;
  waitpid(child, &status, 0);
  EXPECT_EQ(ok, 'y');
}

// The kernel hands a new namespace the lowest free inode number, so a pod's
// namespace that is gone soon has a successor with its device and inode;
// its cookie is another (agent_test.cpp makes that happen for real). Here,
// a living namespace against an identity with its device and inode and
// another cookie: names_namespace and find_netns say that one is nowhere,
// where device and inode alone find it.
TEST(PodNetns, AnIdentityWithAnotherCookieIsAnotherNamespace) {
  UniqueFd ns = new_netns_fd();
  const std::string path = fd_path(ns);
  const NetnsId id = loader::read_pod_network(path).netns;
  if (id.cookie == 0) GTEST_SKIP() << "no namespace cookie for user space here (SO_NETNS_COOKIE, Linux 5.14)";
  EXPECT_EQ(loader::netns_cookie(path), id.cookie);
  const NetnsId by_number{id.dev, id.ino, 0}, other{id.dev, id.ino, id.cookie + 1};
  EXPECT_TRUE(loader::names_namespace(path, id));
  EXPECT_TRUE(loader::names_namespace(path, by_number));
  EXPECT_FALSE(loader::names_namespace(path, other));
  EXPECT_FALSE(loader::names_namespace("/proc/self/ns/net", id));
  // Held only by a descriptor: no path a search finds.
  EXPECT_EQ(loader::find_netns(id), std::nullopt);
  ProcessInNetns inside(ns);
  ASSERT_TRUE(inside.entered());
  EXPECT_EQ(loader::find_netns(id), inside.ns_path());
  EXPECT_EQ(loader::find_netns(by_number), inside.ns_path());
  EXPECT_EQ(loader::find_netns(other), std::nullopt);
}

}  // namespace
}  // namespace meshcap::test
