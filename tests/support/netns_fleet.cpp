#include "support/netns_fleet.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_link.h>
#include <linux/neighbour.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <thread>

#include "support/netns.h"

namespace meshcap::test {

namespace {

constexpr uint32_t kBase = 0x0ae00000;  // 10.224.0.0/12
constexpr size_t kMaxPods = (1u << 20) / 4;
constexpr int kPodIfindex = 2;       // eth0 in a fresh namespace (lo is 1)
constexpr int kHubIfindexBase = 1000;  // h<i> in the hub

std::string ipv4(uint32_t host_order) {
  in_addr a{htonl(host_order)};
  char buf[INET_ADDRSTRLEN];
  return ::inet_ntop(AF_INET, &a, buf, sizeof buf);
}

// One rtnetlink request under construction: header, fixed part, attributes.
class Request {
 public:
  Request(uint16_t type, uint16_t flags) {
    auto* h = header();
    h->nlmsg_len = NLMSG_LENGTH(0);
    h->nlmsg_type = type;
    h->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | flags;
  }
  template <typename T>
  T* fixed() {
    T* p = reinterpret_cast<T*>(buf_ + header()->nlmsg_len);
    header()->nlmsg_len += NLMSG_ALIGN(sizeof(T));
    return p;
  }
  void attr(uint16_t type, const void* data, size_t len) {
    auto* a = reinterpret_cast<rtattr*>(buf_ + NLMSG_ALIGN(header()->nlmsg_len));
    a->rta_type = type;
    a->rta_len = static_cast<uint16_t>(RTA_LENGTH(len));
    std::memcpy(RTA_DATA(a), data, len);
    header()->nlmsg_len = NLMSG_ALIGN(header()->nlmsg_len) + RTA_ALIGN(a->rta_len);
  }
  void attr_str(uint16_t type, const std::string& s) { attr(type, s.c_str(), s.size() + 1); }
  void attr_u32(uint16_t type, uint32_t v) { attr(type, &v, sizeof v); }
  rtattr* nest() {
    auto* a = reinterpret_cast<rtattr*>(buf_ + NLMSG_ALIGN(header()->nlmsg_len));
    attr(0, nullptr, 0);
    return a;
  }
  void end(rtattr* a, uint16_t type) {
    a->rta_type = type;
    a->rta_len = static_cast<uint16_t>(buf_ + header()->nlmsg_len - reinterpret_cast<char*>(a));
  }
  nlmsghdr* header() { return reinterpret_cast<nlmsghdr*>(buf_); }

 private:
  alignas(nlmsghdr) char buf_[1024] = {};
};

// Sends one request on `nl` and waits for its acknowledgement.
void transact(int nl, Request& req, const std::string& step) {
  if (::send(nl, req.header(), req.header()->nlmsg_len, 0) < 0) throw TestSupportError(step, errno);
  alignas(nlmsghdr) char reply[4096];
  const ssize_t n = ::recv(nl, reply, sizeof reply, 0);
  if (n < static_cast<ssize_t>(NLMSG_LENGTH(sizeof(nlmsgerr)))) throw TestSupportError(step, n < 0 ? errno : EIO);
  const auto* h = reinterpret_cast<nlmsghdr*>(reply);
  if (h->nlmsg_type != NLMSG_ERROR) throw TestSupportError(step, EPROTO);
  const int err = -reinterpret_cast<nlmsgerr*>(NLMSG_DATA(h))->error;
  if (err != 0) throw TestSupportError(step, err);
}

UniqueFd netlink_here() {
  UniqueFd fd(::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE));
  if (!fd) throw TestSupportError("netlink socket", errno);
  return fd;
}

// The MAC address of pod i's end (kPodSide) or the hub's end (kHubSide)
// of its veth: fixed, so each side's neighbour entry can be written at once.
constexpr uint8_t kHubSide = 1, kPodSide = 2;
std::array<uint8_t, 6> mac(size_t i, uint8_t side) {
  return {0x02, 0x6d, static_cast<uint8_t>(i >> 16), static_cast<uint8_t>(i >> 8), static_cast<uint8_t>(i), side};
}

// eth0 here (ifindex 2), its peer h<i> in the hub with ifindex 1000+i.
void add_veth(int nl, size_t i, int hub_fd) {
  Request req(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
  req.fixed<ifinfomsg>()->ifi_index = kPodIfindex;
  req.attr_str(IFLA_IFNAME, "eth0");
  const auto pod_mac = mac(i, kPodSide), hub_mac = mac(i, kHubSide);
  req.attr(IFLA_ADDRESS, pod_mac.data(), pod_mac.size());
  rtattr* info = req.nest();
  req.attr_str(IFLA_INFO_KIND, "veth");
  rtattr* data = req.nest();
  rtattr* peer = req.nest();
  auto* pi = req.fixed<ifinfomsg>();
  pi->ifi_index = kHubIfindexBase + static_cast<int>(i);
  req.attr_str(IFLA_IFNAME, "h" + std::to_string(i));
  req.attr(IFLA_ADDRESS, hub_mac.data(), hub_mac.size());
  req.attr_u32(IFLA_NET_NS_FD, static_cast<uint32_t>(hub_fd));
  req.end(peer, VETH_INFO_PEER);
  req.end(data, IFLA_INFO_DATA);
  req.end(info, IFLA_LINKINFO);
  transact(nl, req, "create veth h" + std::to_string(i));
}

void set_up(int nl, int ifindex) {
  Request req(RTM_NEWLINK, 0);
  auto* ifi = req.fixed<ifinfomsg>();
  ifi->ifi_index = ifindex;
  ifi->ifi_flags = ifi->ifi_change = IFF_UP;
  transact(nl, req, "set link " + std::to_string(ifindex) + " up");
}

void add_address(int nl, int ifindex, uint32_t addr) {
  Request req(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
  auto* ifa = req.fixed<ifaddrmsg>();
  ifa->ifa_family = AF_INET;
  ifa->ifa_prefixlen = 30;
  ifa->ifa_index = static_cast<uint32_t>(ifindex);
  const uint32_t a = htonl(addr);
  req.attr(IFA_LOCAL, &a, 4);
  req.attr(IFA_ADDRESS, &a, 4);
  transact(nl, req, "add address " + ipv4(addr));
}

// A permanent neighbour entry: `addr` is at `lladdr` on `ifindex`. The
// kernel's ARP table is one for all namespaces, and its limit
// (net.ipv4.neigh.default.gc_thresh3, 1024 by default) counts every
// namespace's learned entries: a fleet of a thousand pods that learned its
// neighbours by ARP would need two thousand, and connections would fail
// with "neighbour: arp_cache: neighbor table overflow!". Permanent entries
// are exempt from that limit, and no ARP exchange delays a first packet.
void add_neighbour(int nl, int ifindex, uint32_t addr, const std::array<uint8_t, 6>& lladdr) {
  Request req(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE);
  auto* nd = req.fixed<ndmsg>();
  nd->ndm_family = AF_INET;
  nd->ndm_ifindex = ifindex;
  nd->ndm_state = NUD_PERMANENT;
  const uint32_t a = htonl(addr);
  req.attr(NDA_DST, &a, 4);
  req.attr(NDA_LLADDR, lladdr.data(), lladdr.size());
  transact(nl, req, "add neighbour " + ipv4(addr));
}

void add_default_route(int nl, uint32_t via) {
  Request req(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL);
  auto* rt = req.fixed<rtmsg>();
  rt->rtm_family = AF_INET;
  rt->rtm_table = RT_TABLE_MAIN;
  rt->rtm_protocol = RTPROT_BOOT;
  rt->rtm_scope = RT_SCOPE_UNIVERSE;
  rt->rtm_type = RTN_UNICAST;
  const uint32_t g = htonl(via);
  req.attr(RTA_GATEWAY, &g, 4);
  transact(nl, req, "add default route via " + ipv4(via));
}

// The calling thread moves to a new namespace; returns a descriptor of it.
UniqueFd new_netns() {
  if (::unshare(CLONE_NEWNET) != 0) throw TestSupportError("unshare(CLONE_NEWNET)", errno);
  UniqueFd fd(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
  if (!fd) throw TestSupportError("open /proc/thread-self/ns/net", errno);
  return fd;
}

}  // namespace

NetnsFleet::NetnsFleet(size_t pods) {
  if (pods > kMaxPods) throw TestSupportError("NetnsFleet of " + std::to_string(pods) + " pods", EINVAL);
  // One thread of its own makes them all: unshare() moves only it, and it
  // ends, so no other thread of the process ever changes namespace.
  std::exception_ptr failure;
  std::thread maker([&] {
    try {
      hub_ = new_netns();
      UniqueFd hub_nl = netlink_here();
      set_up(hub_nl.get(), 1);
      pods_.reserve(pods);
      for (size_t i = 0; i < pods; i++) {
        UniqueFd ns = new_netns();
        UniqueFd nl = netlink_here();
        const uint32_t base = kBase + 4 * static_cast<uint32_t>(i);
        add_veth(nl.get(), i, hub_.get());
        set_up(nl.get(), 1);
        add_address(nl.get(), kPodIfindex, base + 2);
        set_up(nl.get(), kPodIfindex);
        add_default_route(nl.get(), base + 1);
        add_neighbour(nl.get(), kPodIfindex, base + 1, mac(i, kHubSide));
        const int hub_if = kHubIfindexBase + static_cast<int>(i);
        add_address(hub_nl.get(), hub_if, base + 1);
        set_up(hub_nl.get(), hub_if);
        add_neighbour(hub_nl.get(), hub_if, base + 2, mac(i, kPodSide));
        pods_.push_back(std::move(ns));
      }
    } catch (...) {
      failure = std::current_exception();
    }
  });
  maker.join();
  if (failure) {
    pods_.clear();
    hub_.reset();
    std::rethrow_exception(failure);
  }
}

std::string NetnsFleet::path(size_t i) const { return fd_path(pods_.at(i)); }

std::string NetnsFleet::hub_path() const { return fd_path(hub_); }

std::string NetnsFleet::pod_ipv4(size_t i) const { return ipv4(kBase + 4 * static_cast<uint32_t>(i) + 2); }
std::string NetnsFleet::hub_ipv4(size_t i) const { return ipv4(kBase + 4 * static_cast<uint32_t>(i) + 1); }

}  // namespace meshcap::test
