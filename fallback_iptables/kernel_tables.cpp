#include "kernel_tables.h"

// <netinet/in.h> before the UAPI headers, so glibc's in_addr/in6_addr win.
#include <netinet/in.h>
#include <endian.h>
#include <fcntl.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter_ipv4/ip_tables.h>
#include <linux/netfilter_ipv6/ip6_tables.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <poll.h>
#include <sched.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <functional>
#include <memory>
#include <thread>

namespace meshcap::iptables {

namespace {

// The tables iptables-save lists; other nf_tables tables are not iptables'.
const std::set<std::string> kIptablesTables = {"filter", "nat", "mangle", "raw", "security"};

// NF_INET_* hook numbers, as the legacy blob's hook_entry[] is indexed.
constexpr const char* kHookNames[NF_INET_NUMHOOKS] = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"};

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// Runs `f` on a thread inside the network namespace `netns_fd` (setns(2)
// changes only the calling thread's namespace); `failed` when it cannot.
template <class R, class F>
R in_netns(int netns_fd, R failed, F f) {
  if (netns_fd < 0) return f();
  R result = failed;
  std::exception_ptr error;
  std::thread t([&] {
    try {
      if (::setns(netns_fd, CLONE_NEWNET) != 0) {
        spdlog::debug("cannot enter the network namespace to read netfilter tables: {}", std::strerror(errno));
        return;
      }
      result = f();
    } catch (...) {
      error = std::current_exception();
    }
  });
  t.join();
  if (error) std::rethrow_exception(error);
  return result;
}

bool is_istio(std::string_view name) { return is_istio_chain(name); }

ChainView& chain_of(TableView& t, const std::string& name, bool builtin) {
  for (auto& c : t.chains) {
    if (c.name == name) return c;
  }
  t.chains.push_back(ChainView{name, builtin, 0});
  return t.chains.back();
}

// ---------------------------------------------------------------------------
// xtables-legacy: /proc/<thread>/net/ip{,6}_tables_names lists the tables
// this namespace has initialised (reading it initialises none, unlike asking
// for a table by name), and IPT_SO_GET_ENTRIES returns a table's blob.

struct V4Legacy {
  using Info = ipt_getinfo;
  using Entries = ipt_get_entries;
  using Entry = ipt_entry;
  using Replace = ipt_replace;
  static constexpr int kDomain = AF_INET, kLevel = IPPROTO_IP, kInfo = IPT_SO_GET_INFO, kGet = IPT_SO_GET_ENTRIES;
  static constexpr int kReplace = IPT_SO_SET_REPLACE, kAddCounters = IPT_SO_SET_ADD_COUNTERS;
  static constexpr const char* kNames = "/proc/thread-self/net/ip_tables_names";
};

struct V6Legacy {
  using Info = ip6t_getinfo;
  using Entries = ip6t_get_entries;
  using Entry = ip6t_entry;
  using Replace = ip6t_replace;
  static constexpr int kDomain = AF_INET6, kLevel = IPPROTO_IPV6, kInfo = IP6T_SO_GET_INFO, kGet = IP6T_SO_GET_ENTRIES;
  static constexpr int kReplace = IP6T_SO_SET_REPLACE, kAddCounters = IP6T_SO_SET_ADD_COUNTERS;
  static constexpr const char* kNames = "/proc/thread-self/net/ip6_tables_names";
};

// One table's blob as the kernel returns it, with its header.
template <class T>
struct LegacyBlob {
  typename T::Info info{};
  std::string entries;  // counters zeroed
};

// Reads table `name` (which initialises it in this namespace, as iptables does).
template <class T>
std::optional<LegacyBlob<T>> read_blob(int sock, const std::string& name) {
  for (int attempt = 0; attempt < 3; ++attempt) {
    LegacyBlob<T> b;
    std::strncpy(b.info.name, name.c_str(), sizeof(b.info.name) - 1);
    socklen_t len = sizeof(b.info);
    if (::getsockopt(sock, T::kLevel, T::kInfo, &b.info, &len) != 0) return std::nullopt;
    // Read into the string that keeps the entries, then the header dropped
    // in place: one buffer of the table's size, not two (it can be MBs).
    constexpr size_t kHeader = offsetof(typename T::Entries, entrytable);
    b.entries.resize(kHeader + b.info.size);
    auto* get = reinterpret_cast<typename T::Entries*>(b.entries.data());
    std::strncpy(get->name, name.c_str(), sizeof(get->name) - 1);
    get->size = b.info.size;
    len = static_cast<socklen_t>(b.entries.size());
    if (::getsockopt(sock, T::kLevel, T::kGet, get, &len) != 0) {
      if (errno == EAGAIN) continue;  // the table changed between the two calls
      return std::nullopt;
    }
    b.entries.erase(0, kHeader);
    for (size_t off = 0; off + sizeof(typename T::Entry) <= b.entries.size();) {
      auto* e = reinterpret_cast<typename T::Entry*>(b.entries.data() + off);
      if (e->next_offset < sizeof(typename T::Entry)) return std::nullopt;
      e->counters = xt_counters{0, 0};
      off += e->next_offset;
    }
    return b;
  }
  return std::nullopt;
}

// The view of table `name` from its blob.
template <class T>
std::optional<TableView> legacy_table_view(const LegacyBlob<T>& read, const std::string& name) {
  const typename T::Info& info = read.info;
  const char* blob = read.entries.data();
  auto entry_at = [&](unsigned off) { return reinterpret_cast<const typename T::Entry*>(blob + off); };
  auto target_of = [&](const typename T::Entry* e) {
    return reinterpret_cast<const xt_entry_target*>(reinterpret_cast<const char*>(e) + e->target_offset);
  };
  auto valid = [&](unsigned off) {
    if (off + sizeof(typename T::Entry) > info.size) return false;
    const auto* e = entry_at(off);
    return e->next_offset >= sizeof(typename T::Entry) && off + e->next_offset <= info.size &&
           e->target_offset + sizeof(xt_entry_target) <= e->next_offset;
  };

  // Where each chain starts, which entries are chain headers or policies.
  std::map<unsigned, std::pair<std::string, bool>> starts;  // offset -> (chain, builtin)
  std::set<unsigned> headers, policies;
  for (unsigned h = 0; h < NF_INET_NUMHOOKS; ++h) {
    if ((info.valid_hooks & (1u << h)) == 0) continue;
    starts[info.hook_entry[h]] = {kHookNames[h], true};
    policies.insert(info.underflow[h]);
  }
  for (unsigned off = 0; off < info.size; off += entry_at(off)->next_offset) {
    if (!valid(off)) return std::nullopt;
    const auto* t = target_of(entry_at(off));
    if (std::strcmp(t->u.user.name, XT_ERROR_TARGET) != 0) continue;
    headers.insert(off);
    const std::string chain(reinterpret_cast<const char*>(t->data),
                            strnlen(reinterpret_cast<const char*>(t->data), XT_FUNCTION_MAXNAMELEN));
    if (chain != XT_ERROR_TARGET) starts[off + entry_at(off)->next_offset] = {chain, false};
  }

  TableView view{name, {}, 0};
  ChainView* current = nullptr;
  for (unsigned off = 0; off < info.size; off += entry_at(off)->next_offset) {
    if (auto s = starts.find(off); s != starts.end()) current = &chain_of(view, s->second.first, s->second.second);
    if (headers.count(off) || policies.count(off) || current == nullptr) continue;
    ++current->rules;
    const auto* t = target_of(entry_at(off));
    if (t->u.user.name[0] != '\0') continue;  // not the standard target: no jump
    const int verdict = reinterpret_cast<const xt_standard_target*>(t)->verdict;
    if (verdict < 0) continue;
    auto to = starts.find(static_cast<unsigned>(verdict));
    if (to != starts.end() && !to->second.second && is_istio(to->second.first) && !is_istio(current->name)) {
      ++view.istio_jumps;
    }
  }
  // A user-defined chain ends with its RETURN entry, which is no rule.
  for (auto& c : view.chains) {
    if (!c.builtin && c.rules > 0) --c.rules;
  }
  return view;
}

template <class T>
std::optional<TableView> read_legacy_table(int sock, const std::string& name) {
  const auto read = read_blob<T>(sock, name);
  if (!read) return std::nullopt;
  return legacy_table_view<T>(*read, name);
}

// ---- Legacy table images: a table's blob read and written whole, as
// libiptc does (IPT_SO_GET_ENTRIES, IPT_SO_SET_REPLACE, then the counters).

// The offset of each entry of a blob, in order.
template <class T>
std::vector<uint32_t> entry_offsets(const std::string& entries) {
  std::vector<uint32_t> out;
  for (size_t off = 0; off + sizeof(typename T::Entry) <= entries.size();) {
    out.push_back(static_cast<uint32_t>(off));
    const auto* e = reinterpret_cast<const typename T::Entry*>(entries.data() + off);
    if (e->next_offset < sizeof(typename T::Entry)) break;
    off += e->next_offset;
  }
  return out;
}

// The xtables lock iptables-legacy takes around a table's read and replace
// (iptables -w); held while this object lives.
class XtablesLock {
 public:
  XtablesLock() {
    if (fd_.get() < 0) return;
    for (int waited_ms = 0; waited_ms < 30000; ++waited_ms) {  // iptables --wait=30
      if (::flock(fd_.get(), LOCK_EX | LOCK_NB) == 0) {
        locked_ = true;
        return;
      }
      if (errno != EWOULDBLOCK && errno != EINTR) return;
      ::usleep(1000);
    }
  }
  bool locked() const { return locked_; }

 private:
  static int open_lock() {
    const char* path = std::getenv("XTABLES_LOCKFILE");
    return ::open(path != nullptr && *path != '\0' ? path : "/run/xtables.lock", O_RDONLY | O_CREAT | O_CLOEXEC, 0600);
  }
  Fd fd_{open_lock()};
  bool locked_ = false;
};

// A table's header for IPT_SO_SET_REPLACE.
struct LegacyHeader {
  uint32_t valid_hooks = 0, num_entries = 0;
  std::vector<uint32_t> hook_entry, underflow;
};

template <class T>
LegacyHeader header_of(const typename T::Info& info) {
  return {info.valid_hooks,
          info.num_entries,
          {std::begin(info.hook_entry), std::end(info.hook_entry)},
          {std::begin(info.underflow), std::end(info.underflow)}};
}

// Replaces table `now` with `entries` (header `h`), as libiptc commits: the
// kernel refuses it (EAGAIN) if the table no longer has `now`'s entry count;
// each hook's policy keeps its counters.
template <class T>
bool replace_table(int sock, const LegacyBlob<T>& now, const std::string& entries, const LegacyHeader& h) {
  if (h.hook_entry.size() != NF_INET_NUMHOOKS || h.underflow.size() != NF_INET_NUMHOOKS) return false;
  std::vector<char> buf(sizeof(typename T::Replace) + entries.size());
  auto* r = reinterpret_cast<typename T::Replace*>(buf.data());
  std::memcpy(r->name, now.info.name, sizeof(r->name));
  r->valid_hooks = h.valid_hooks;
  r->num_entries = h.num_entries;
  r->size = static_cast<unsigned>(entries.size());
  for (unsigned i = 0; i < NF_INET_NUMHOOKS; ++i) {
    r->hook_entry[i] = h.hook_entry[i];
    r->underflow[i] = h.underflow[i];
  }
  std::vector<xt_counters> old(now.info.num_entries);
  r->num_counters = now.info.num_entries;
  r->counters = old.data();
  std::memcpy(buf.data() + sizeof(typename T::Replace), entries.data(), entries.size());
  if (::setsockopt(sock, T::kLevel, T::kReplace, buf.data(), static_cast<socklen_t>(buf.size())) != 0) {
    spdlog::debug("replacing legacy table {}: {}", now.info.name, std::strerror(errno));
    return false;
  }
  const auto old_at = entry_offsets<T>(now.entries);
  const auto new_at = entry_offsets<T>(entries);
  auto index = [](const std::vector<uint32_t>& offsets, uint32_t off) -> std::optional<size_t> {
    const auto it = std::lower_bound(offsets.begin(), offsets.end(), off);
    if (it == offsets.end() || *it != off) return std::nullopt;
    return static_cast<size_t>(it - offsets.begin());
  };
  std::vector<char> cbuf(sizeof(xt_counters_info) + h.num_entries * sizeof(xt_counters), 0);
  auto* ci = reinterpret_cast<xt_counters_info*>(cbuf.data());
  std::memcpy(ci->name, now.info.name, sizeof(ci->name));
  ci->num_counters = h.num_entries;
  for (unsigned i = 0; i < NF_INET_NUMHOOKS; ++i) {
    if ((h.valid_hooks & (1u << i)) == 0) continue;
    const auto from = index(old_at, now.info.underflow[i]);
    const auto to = index(new_at, h.underflow[i]);
    if (from && to && *from < old.size() && *to < h.num_entries) ci->counters[*to] = old[*from];
  }
  if (::setsockopt(sock, T::kLevel, T::kAddCounters, cbuf.data(), static_cast<socklen_t>(cbuf.size())) != 0) {
    spdlog::debug("legacy table {}: policy counters not carried over: {}", now.info.name, std::strerror(errno));
  }
  return true;
}

template <class T>
std::optional<std::vector<TableImage>> legacy_before(const std::vector<std::string>& tables) {
  Fd sock(::socket(T::kDomain, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW));
  if (sock.get() < 0) return std::nullopt;
  std::vector<TableImage> out;
  for (const auto& name : tables) {
    auto b = read_blob<T>(sock.get(), name);
    // Only a table holding nothing but its policies: then every entry a
    // replay replaces is a policy, whose counters it keeps.
    if (!b || b->info.num_entries != static_cast<unsigned>(__builtin_popcount(b->info.valid_hooks)) + 1) {
      return std::nullopt;
    }
    TableImage img;
    img.table = name;
    img.before = std::move(b->entries);
    const LegacyHeader h = header_of<T>(b->info);
    img.before_entries = h.num_entries;
    img.before_hook_entry = h.hook_entry;
    img.before_underflow = h.underflow;
    out.push_back(std::move(img));
  }
  return out;
}

template <class T>
bool legacy_after(std::vector<TableImage>& images) {
  Fd sock(::socket(T::kDomain, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW));
  if (sock.get() < 0) return false;
  for (auto& img : images) {
    auto b = read_blob<T>(sock.get(), img.table);
    if (!b) return false;
    const LegacyHeader h = header_of<T>(b->info);
    img.after = std::move(b->entries);
    img.valid_hooks = h.valid_hooks;
    img.num_entries = h.num_entries;
    img.hook_entry = h.hook_entry;
    img.underflow = h.underflow;
  }
  return true;
}

// Replaces each table of `images`, whose blob `now` holds, with its other
// state (to_after: the after state, else the before state); on a failure
// puts back the tables already replaced. Under the xtables lock.
template <class T>
bool replace_tables(int sock, const std::vector<TableImage>& images, const std::vector<LegacyBlob<T>>& now,
                    bool to_after) {
  auto from = [&](const TableImage& i) -> const std::string& { return to_after ? i.before : i.after; };
  auto to = [&](const TableImage& i) -> const std::string& { return to_after ? i.after : i.before; };
  auto to_header = [&](const TableImage& i) -> LegacyHeader {
    if (to_after) return {i.valid_hooks, i.num_entries, i.hook_entry, i.underflow};
    return {i.valid_hooks, i.before_entries, i.before_hook_entry, i.before_underflow};
  };
  for (size_t i = 0; i < images.size(); ++i) {
    if (replace_table<T>(sock, now[i], to(images[i]), to_header(images[i]))) continue;
    for (size_t j = 0; j < i; ++j) {
      auto b = read_blob<T>(sock, images[j].table);
      if (!b || !replace_table<T>(sock, *b, from(images[j]), header_of<T>(now[j].info))) {
        spdlog::warn("legacy table {}: could not put back its rules after a failed replay", images[j].table);
      }
    }
    return false;
  }
  return true;
}

// Puts each table of `images` in its after state, if all of them are in
// their before state exactly; under the xtables lock, as iptables -w. On a
// failure the tables already changed are put back (iptables-restore, too,
// commits table by table; the lock keeps other iptables out meanwhile).
// The reverse, for cleanup, is legacy_swap_back_if.
template <class T>
bool legacy_replay(const std::vector<TableImage>& images) {
  XtablesLock lock;
  if (!lock.locked()) return false;
  Fd sock(::socket(T::kDomain, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW));
  if (sock.get() < 0) return false;
  std::vector<LegacyBlob<T>> now;
  for (const auto& img : images) {
    auto b = read_blob<T>(sock.get(), img.table);
    if (!b || b->entries != img.before) return false;
    now.push_back(std::move(*b));
  }
  return replace_tables<T>(sock.get(), images, now, true);
}

// The legacy tables this namespace has initialised; nullopt when that cannot
// be told.
template <class T>
std::optional<std::vector<std::string>> legacy_table_names() {
  std::ifstream names(T::kNames);
  std::vector<std::string> tables;
  if (!names) {
    // Without the file the legacy tables are not in this kernel (module not
    // loaded): nothing can be held there.
    if (errno == ENOENT) return tables;
    return std::nullopt;
  }
  for (std::string line; std::getline(names, line);) {
    if (!line.empty()) tables.push_back(line);
  }
  return tables;
}

template <class T>
std::optional<TablesView> read_legacy() {
  const auto tables = legacy_table_names<T>();
  if (!tables) return std::nullopt;
  TablesView view;
  if (tables->empty()) return view;
  Fd sock(::socket(T::kDomain, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW));
  if (sock.get() < 0) return std::nullopt;
  for (const auto& name : *tables) {
    auto t = read_legacy_table<T>(sock.get(), name);
    if (!t) return std::nullopt;
    view.tables.push_back(std::move(*t));
  }
  return view;
}

// replay_back_if for legacy: under the xtables lock, every table read once,
// the view of them given to `check`, and the tables of `images` put back in
// their before state if `check` holds and they hold the after state exactly.
template <class T>
bool legacy_swap_back_if(const std::vector<TableImage>& images,
                         const std::function<bool(const TablesView&)>& check) {
  XtablesLock lock;
  if (!lock.locked()) return false;
  const auto tables = legacy_table_names<T>();
  if (!tables) return false;
  Fd sock(::socket(T::kDomain, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW));
  if (sock.get() < 0) return false;
  TablesView view;
  std::vector<LegacyBlob<T>> now(images.size());
  std::vector<bool> found(images.size(), false);
  for (const auto& name : *tables) {
    auto b = read_blob<T>(sock.get(), name);
    if (!b) return false;
    auto t = legacy_table_view<T>(*b, name);
    if (!t) return false;
    view.tables.push_back(std::move(*t));
    for (size_t i = 0; i < images.size(); ++i) {
      if (images[i].table != name || found[i]) continue;
      if (b->entries != images[i].after) return false;
      now[i] = std::move(*b);
      found[i] = true;
      break;
    }
  }
  // A table the namespace has not initialised holds no after state.
  if (std::find(found.begin(), found.end(), false) != found.end()) return false;
  if (!check(view)) return false;
  return replace_tables<T>(sock.get(), images, now, false);
}

// ---------------------------------------------------------------------------
// nf_tables over NETLINK_NETFILTER.

struct Attr {
  uint16_t type;
  const char* data;
  size_t len;
  std::string str() const { return std::string(data, strnlen(data, len)); }
};

template <class F>
void for_attrs(const char* p, size_t len, F&& f) {
  while (len >= NLA_HDRLEN) {
    const auto* a = reinterpret_cast<const nlattr*>(p);
    if (a->nla_len < NLA_HDRLEN || a->nla_len > len) return;
    f(Attr{static_cast<uint16_t>(a->nla_type & NLA_TYPE_MASK), p + NLA_HDRLEN, static_cast<size_t>(a->nla_len) - NLA_HDRLEN});
    const size_t step = NLA_ALIGN(a->nla_len);
    if (step >= len) return;
    p += step;
    len -= step;
  }
}

// Builds netlink messages into one buffer.
class Messages {
 public:
  size_t begin(uint16_t type, uint16_t flags, uint32_t seq, uint8_t family, uint16_t res_id = 0) {
    const size_t at = buf_.size();
    buf_.resize(at + NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(nfgenmsg)), 0);
    auto* h = reinterpret_cast<nlmsghdr*>(buf_.data() + at);
    h->nlmsg_type = type;
    h->nlmsg_flags = flags;
    h->nlmsg_seq = seq;
    auto* g = reinterpret_cast<nfgenmsg*>(buf_.data() + at + NLMSG_HDRLEN);
    g->nfgen_family = family;
    g->version = NFNETLINK_V0;
    g->res_id = htons(res_id);
    return at;
  }
  void put_str(uint16_t type, const std::string& s) { put_raw(type, s.c_str(), s.size() + 1); }
  void put_raw(uint16_t type, const void* data, size_t size) {
    const size_t at = buf_.size();
    const size_t len = NLA_HDRLEN + size;
    buf_.resize(at + NLA_ALIGN(len), 0);
    auto* a = reinterpret_cast<nlattr*>(buf_.data() + at);
    a->nla_type = type;
    a->nla_len = static_cast<uint16_t>(len);
    std::memcpy(buf_.data() + at + NLA_HDRLEN, data, size);
  }
  void end(size_t at) {
    reinterpret_cast<nlmsghdr*>(buf_.data() + at)->nlmsg_len = static_cast<uint32_t>(buf_.size() - at);
  }
  void put_u32(uint16_t type, uint32_t host) {
    const uint32_t be = htonl(host);
    put_raw(type, &be, sizeof be);
  }
  void put_u64(uint16_t type, uint64_t host) {
    const uint64_t be = htobe64(host);
    put_raw(type, &be, sizeof be);
  }
  size_t nest_begin(uint16_t type) {
    const size_t at = buf_.size();
    buf_.resize(at + NLA_HDRLEN, 0);
    reinterpret_cast<nlattr*>(buf_.data() + at)->nla_type = type | NLA_F_NESTED;
    return at;
  }
  void nest_end(size_t at) {
    reinterpret_cast<nlattr*>(buf_.data() + at)->nla_len = static_cast<uint16_t>(buf_.size() - at);
  }
  void put_bytes(const std::string& attrs) { buf_.insert(buf_.end(), attrs.begin(), attrs.end()); }
  const std::vector<char>& bytes() const { return buf_; }

 private:
  std::vector<char> buf_;
};

uint16_t nft_type(int msg) { return static_cast<uint16_t>((NFNL_SUBSYS_NFTABLES << 8) | msg); }

class Netlink {
 public:
  Netlink() : fd_(::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER)) {}
  bool ok() const { return fd_.get() >= 0; }

  bool send(const Messages& m) {
    sockaddr_nl to{};
    to.nl_family = AF_NETLINK;
    const auto& b = m.bytes();
    // A batch larger than the default send buffer, as iptables-nft sends them.
    if (b.size() > (1u << 17)) {
      const int size = static_cast<int>(b.size() + 65536);
      ::setsockopt(fd_.get(), SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size);
    }
    return ::sendto(fd_.get(), b.data(), b.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof(to)) ==
           static_cast<ssize_t>(b.size());
  }

  // Calls `each` for every message answering `seq` until DONE, an error, or
  // `acks` acknowledgements; false on an error, an interrupted dump or no answer.
  bool receive(uint32_t first_seq, uint32_t last_seq, const std::function<void(const nlmsghdr*)>& each,
               size_t acks = 0, bool* interrupted = nullptr) {
    size_t acked = 0;
    for (;;) {
      pollfd p{fd_.get(), POLLIN, 0};
      if (::poll(&p, 1, 2000) <= 0) return false;
      const ssize_t n = ::recv(fd_.get(), buf_storage_.get(), kBuf, 0);
      if (n < 0) {
        if (errno == EINTR) continue;
        return false;
      }
      int len = static_cast<int>(n);
      for (auto* h = reinterpret_cast<const nlmsghdr*>(buf_storage_.get()); NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
        if (h->nlmsg_seq < first_seq || h->nlmsg_seq > last_seq) continue;
        if (h->nlmsg_flags & NLM_F_DUMP_INTR) {
          if (interrupted) *interrupted = true;
          return false;
        }
        if (h->nlmsg_type == NLMSG_DONE) return true;
        if (h->nlmsg_type == NLMSG_ERROR) {
          const auto* e = reinterpret_cast<const nlmsgerr*>(NLMSG_DATA(h));
          if (e->error != 0) {
            spdlog::debug("nf_tables netlink error {}: {}", h->nlmsg_seq, std::strerror(-e->error));
            return false;
          }
          if (acks > 0 && ++acked == acks) return true;
          continue;
        }
        each(h);
      }
    }
  }

  // One dump, tried again when a concurrent change interrupted it.
  // `request` adds attributes to the dump's request (the kernel's filters).
  bool dump(int msg, uint8_t family, const std::function<void(const char*, size_t)>& each,
            const std::function<void(Messages&)>& request = nullptr) {
    for (int attempt = 0; attempt < 3; ++attempt) {
      Messages m;
      const uint32_t seq = ++seq_;
      const size_t at = m.begin(nft_type(msg), NLM_F_REQUEST | NLM_F_DUMP, seq, family);
      if (request) request(m);
      m.end(at);
      if (!send(m)) return false;
      bool interrupted = false;
      const bool ok = receive(seq, seq, [&](const nlmsghdr* h) {
        if (h->nlmsg_len < NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(nfgenmsg))) return;
        const char* attrs = reinterpret_cast<const char*>(NLMSG_DATA(h)) + NLMSG_ALIGN(sizeof(nfgenmsg));
        each(attrs, h->nlmsg_len - NLMSG_HDRLEN - NLMSG_ALIGN(sizeof(nfgenmsg)));
      }, 0, &interrupted);
      if (ok) return true;
      if (!interrupted) return false;
    }
    return false;
  }

  uint32_t next_seq() { return ++seq_; }

 private:
  Fd fd_;
  uint32_t seq_ = static_cast<uint32_t>(::getpid()) << 8;
  // Not zeroed: recv() faults in only the pages a reply fills.
  static constexpr size_t kBuf = 1 << 18;
  std::unique_ptr<char[]> buf_storage_ = std::unique_ptr<char[]>(new char[kBuf]);
};

// Calls f(name, data, data_len) for each expression of a rule's
// NFTA_RULE_EXPRESSIONS (data: nullptr when the expression has none).
template <class F>
void for_expressions(const char* exprs, size_t len, F&& f) {
  for_attrs(exprs, len, [&](const Attr& elem) {
    if (elem.type != NFTA_LIST_ELEM) return;
    std::string name;
    const char* data = nullptr;
    size_t data_len = 0;
    for_attrs(elem.data, elem.len, [&](const Attr& a) {
      if (a.type == NFTA_EXPR_NAME) name = a.str();
      if (a.type == NFTA_EXPR_DATA) data = a.data, data_len = a.len;
    });
    f(name, data, data_len);
  });
}

// The chain a rule's immediate verdict jumps (or goes) to, if any.
void jump_targets(const char* exprs, size_t len, std::vector<std::string>& out) {
  for_expressions(exprs, len, [&](const std::string& name, const char* data, size_t data_len) {
    if (name != "immediate" || data == nullptr) return;
    for_attrs(data, data_len, [&](const Attr& imm) {
      if (imm.type != NFTA_IMMEDIATE_DATA) return;
      for_attrs(imm.data, imm.len, [&](const Attr& d) {
        if (d.type != NFTA_DATA_VERDICT) return;
        int32_t code = 0;
        std::string chain;
        for_attrs(d.data, d.len, [&](const Attr& v) {
          if (v.type == NFTA_VERDICT_CODE && v.len >= 4) {
            uint32_t be;
            std::memcpy(&be, v.data, 4);
            code = static_cast<int32_t>(ntohl(be));
          }
          if (v.type == NFTA_VERDICT_CHAIN) chain = v.str();
        });
        if ((code == NFT_JUMP || code == NFT_GOTO) && !chain.empty()) out.push_back(chain);
      });
    });
  });
}

uint8_t nfproto(Family family) { return family == Family::V4 ? NFPROTO_IPV4 : NFPROTO_IPV6; }

// One nf_tables rule of an iptables table, by its handle.
struct NftRule {
  std::string table;
  std::string chain;
  uint64_t handle = 0;
  bool jumps_to_istio = false;
};

// The iptables tables of `family` in nf_tables. Without `istio_rules` the
// rules of ISTIO_* chains are not read (the chains are: their rule counts
// stay 0): one dump per other chain, filtered by the kernel, so that a pod
// with 10,000 exclusions is not read rule by rule to find the jumps.
std::optional<TablesView> read_nft(Netlink& nl, Family family, std::vector<NftRule>* rules = nullptr,
                                   bool istio_rules = true) {
  const uint8_t proto = nfproto(family);
  TablesView view;
  auto table = [&](const std::string& name) -> TableView* {
    for (auto& t : view.tables) {
      if (t.name == name) return &t;
    }
    return nullptr;
  };
  bool ok = nl.dump(NFT_MSG_GETTABLE, proto, [&](const char* attrs, size_t len) {
    for_attrs(attrs, len, [&](const Attr& a) {
      if (a.type == NFTA_TABLE_NAME && kIptablesTables.count(a.str())) view.tables.push_back(TableView{a.str(), {}, 0});
    });
  });
  if (!ok) return std::nullopt;
  if (view.tables.empty()) return view;
  ok = nl.dump(NFT_MSG_GETCHAIN, proto, [&](const char* attrs, size_t len) {
    std::string t, name;
    bool hooked = false;
    for_attrs(attrs, len, [&](const Attr& a) {
      if (a.type == NFTA_CHAIN_TABLE) t = a.str();
      if (a.type == NFTA_CHAIN_NAME) name = a.str();
      if (a.type == NFTA_CHAIN_HOOK) hooked = true;
    });
    if (TableView* tv = table(t); tv && !name.empty()) chain_of(*tv, name, hooked);
  });
  if (!ok) return std::nullopt;
  const std::pair<std::string, std::string>* only = nullptr;  // the chain a filtered dump asked for
  auto each_rule = [&](const char* attrs, size_t len) {
    std::string t, chain;
    std::vector<std::string> jumps;
    uint64_t handle = 0;
    for_attrs(attrs, len, [&](const Attr& a) {
      if (a.type == NFTA_RULE_TABLE) t = a.str();
      if (a.type == NFTA_RULE_CHAIN) chain = a.str();
      if (a.type == NFTA_RULE_EXPRESSIONS) jump_targets(a.data, a.len, jumps);
      if (a.type == NFTA_RULE_HANDLE && a.len >= 8) {
        std::memcpy(&handle, a.data, 8);
        handle = be64toh(handle);
      }
    });
    TableView* tv = table(t);
    if (tv == nullptr || chain.empty()) return;
    if (only != nullptr && (only->first != t || only->second != chain)) return;  // a kernel that ignores the filter
    ++chain_of(*tv, chain, false).rules;
    size_t to_istio = 0;
    if (!is_istio(chain)) {
      for (const auto& j : jumps) to_istio += is_istio(j) ? 1 : 0;
      tv->istio_jumps += to_istio;
    }
    if (rules != nullptr) rules->push_back(NftRule{t, chain, handle, to_istio > 0});
  };
  if (istio_rules) return nl.dump(NFT_MSG_GETRULE, proto, each_rule) ? std::optional(view) : std::nullopt;
  std::vector<std::pair<std::string, std::string>> others;  // (table, chain) outside ISTIO_*
  for (const auto& t : view.tables) {
    for (const auto& c : t.chains) {
      if (!is_istio(c.name)) others.emplace_back(t.name, c.name);
    }
  }
  for (const auto& tc : others) {
    only = &tc;
    const bool read = nl.dump(NFT_MSG_GETRULE, proto, each_rule, [&](Messages& m) {
      m.put_str(NFTA_RULE_TABLE, tc.first);
      m.put_str(NFTA_RULE_CHAIN, tc.second);
    });
    if (!read) return std::nullopt;
  }
  return view;
}


// The ruleset's generation (NFT_MSG_GETGEN), which a transaction can carry
// so that the kernel refuses it if anything changed since.
std::optional<uint32_t> ruleset_generation(Netlink& nl) {
  Messages m;
  const uint32_t seq = nl.next_seq();
  m.end(m.begin(nft_type(NFT_MSG_GETGEN), NLM_F_REQUEST | NLM_F_ACK, seq, AF_UNSPEC));
  if (!nl.send(m)) return std::nullopt;
  std::optional<uint32_t> gen;
  const bool ok = nl.receive(seq, seq, [&](const nlmsghdr* h) {
    if ((h->nlmsg_type & 0xff) != NFT_MSG_NEWGEN) return;
    if (h->nlmsg_len < NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(nfgenmsg))) return;
    const char* attrs = reinterpret_cast<const char*>(NLMSG_DATA(h)) + NLMSG_ALIGN(sizeof(nfgenmsg));
    for_attrs(attrs, h->nlmsg_len - NLMSG_HDRLEN - NLMSG_ALIGN(sizeof(nfgenmsg)), [&](const Attr& a) {
      if (a.type == NFTA_GEN_ID && a.len >= 4) {
        uint32_t be;
        std::memcpy(&be, a.data, 4);
        gen = ntohl(be);
      }
    });
  }, 1);
  return ok ? gen : std::nullopt;
}

// What one removal transaction deletes, in order.
struct IstioRemoval {
  std::vector<NftRule> jumps;                                    // rules outside ISTIO_* chains
  std::vector<std::pair<std::string, std::string>> istio_chains;  // (table, chain): flushed, then deleted
  std::vector<const TableView*> tables;                          // deleted whole (base chains, then table)
};

// An nf_tables transaction: its messages go between begin() and commit().
// With a generation the kernel refuses it if the ruleset changed since.
class Batch {
 public:
  Batch(Netlink& nl, std::optional<uint32_t> generation) : nl_(nl), first_(nl.next_seq()) {
    const size_t at = m.begin(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, first_, AF_UNSPEC, NFNL_SUBSYS_NFTABLES);
    if (generation) m.put_u32(NFNL_BATCH_GENID, *generation);
    m.end(at);
  }
  // Sends it and waits for `acks` acknowledgements (or the first error).
  bool commit(size_t acks) {
    const uint32_t last = nl_.next_seq();
    m.end(m.begin(NFNL_MSG_BATCH_END, NLM_F_REQUEST, last, AF_UNSPEC, NFNL_SUBSYS_NFTABLES));
    return nl_.send(m) && nl_.receive(first_, last, [](const nlmsghdr*) {}, acks);
  }
  Messages m;

 private:
  Netlink& nl_;
  const uint32_t first_;
};

// One transaction for every family of `all`; refused whole if any part is.
bool commit_removal(Netlink& nl, std::optional<uint32_t> generation,
                    const std::vector<std::pair<Family, IstioRemoval>>& all) {
  Batch batch(nl, generation);
  Messages& m = batch.m;
  size_t acks = 0;
  uint8_t proto = 0;
  auto msg = [&](int type, uint16_t extra_flags) {
    ++acks;
    return m.begin(nft_type(type), NLM_F_REQUEST | NLM_F_ACK | extra_flags, nl.next_seq(), proto);
  };
  for (const auto& [family, r] : all) {
    proto = nfproto(family);
    for (const auto& rule : r.jumps) {
      const size_t at = msg(NFT_MSG_DELRULE, 0);
      m.put_str(NFTA_RULE_TABLE, rule.table);
      m.put_str(NFTA_RULE_CHAIN, rule.chain);
      m.put_u64(NFTA_RULE_HANDLE, rule.handle);
      m.end(at);
    }
    for (const auto& [table, chain] : r.istio_chains) {  // no handle: every rule of the chain
      const size_t at = msg(NFT_MSG_DELRULE, 0);
      m.put_str(NFTA_RULE_TABLE, table);
      m.put_str(NFTA_RULE_CHAIN, chain);
      m.end(at);
    }
    for (const auto& [table, chain] : r.istio_chains) {  // refused if anything still refers to it
      const size_t at = msg(NFT_MSG_DELCHAIN, NLM_F_NONREC);
      m.put_str(NFTA_CHAIN_TABLE, table);
      m.put_str(NFTA_CHAIN_NAME, chain);
      m.end(at);
    }
    for (const TableView* t : r.tables) {
      for (const auto& c : t->chains) {
        if (!c.builtin) continue;
        const size_t at = msg(NFT_MSG_DELCHAIN, NLM_F_NONREC);
        m.put_str(NFTA_CHAIN_TABLE, t->name);
        m.put_str(NFTA_CHAIN_NAME, c.name);
        m.end(at);
      }
      const size_t at = msg(NFT_MSG_DELTABLE, NLM_F_NONREC);  // refused if a set or object is left
      m.put_str(NFTA_TABLE_NAME, t->name);
      m.end(at);
    }
  }
  return acks == 0 || batch.commit(acks);
}

// ---- nf_tables table images: the attributes the kernel lists for a table,
// its chains and its rules, kept as the messages that create them again.

// Appends attribute `a` (as listed) to `out`, header and flags included.
void append_attr(std::string& out, const Attr& a) {
  const char* hdr = a.data - NLA_HDRLEN;
  const size_t len = NLA_HDRLEN + a.len;
  out.append(hdr, len);
  out.append(NLA_ALIGN(len) - len, '\0');
}

uint32_t be32_at(const char* p) {
  uint32_t be;
  std::memcpy(&be, p, 4);
  return ntohl(be);
}

// Copies a rule's expressions with their counters zeroed, and finds the
// protocol iptables-nft matched (`-p`: meta l4proto, then cmp), which it
// also passes to the compat layer (NFTA_RULE_COMPAT: the kernel checks
// xt matches and targets against it, and does not list it).
void copy_expressions(const Attr& exprs, std::string& out, uint32_t& proto, bool& proto_inverted) {
  std::string copy(exprs.data - NLA_HDRLEN, NLA_HDRLEN + exprs.len);
  const char* base = copy.data() + NLA_HDRLEN;
  bool after_l4proto = false;
  for_expressions(base, exprs.len, [&](const std::string& name, const char* data, size_t data_len) {
    const bool cmp_of_l4proto = after_l4proto && name == "cmp";
    after_l4proto = false;
    if (data == nullptr) return;
    if (name == "counter") {
      for_attrs(data, data_len, [&](const Attr& c) {
        if ((c.type == NFTA_COUNTER_BYTES || c.type == NFTA_COUNTER_PACKETS) && c.len == 8) {
          std::memset(copy.data() + (c.data - copy.data()), 0, 8);
        }
      });
    } else if (name == "meta") {
      for_attrs(data, data_len, [&](const Attr& m) {
        if (m.type == NFTA_META_KEY && m.len == 4 && be32_at(m.data) == NFT_META_L4PROTO) after_l4proto = true;
      });
    } else if (cmp_of_l4proto && proto == 0) {
      for_attrs(data, data_len, [&](const Attr& c) {
        if (c.type == NFTA_CMP_OP && c.len == 4) proto_inverted = be32_at(c.data) == NFT_CMP_NEQ;
        if (c.type == NFTA_CMP_DATA) {
          for_attrs(c.data, c.len, [&](const Attr& v) {
            if (v.type == NFTA_DATA_VALUE && v.len >= 1) proto = static_cast<uint8_t>(v.data[0]);
          });
        }
      });
    }
  });
  out.append(copy);
  out.append(NLA_ALIGN(copy.size()) - copy.size(), '\0');
}

std::optional<std::vector<TableImage>> nft_before(Family family, const std::vector<std::string>& tables) {
  Netlink nl;
  if (!nl.ok()) return std::nullopt;
  const auto view = read_nft(nl, family);
  if (!view) return std::nullopt;
  std::vector<TableImage> out;
  for (const auto& t : tables) {
    if (view->find(t) != nullptr) return std::nullopt;  // replays create tables, nothing else
    TableImage img;
    img.table = t;
    out.push_back(std::move(img));
  }
  return out;
}

bool nft_after(Family family, std::vector<TableImage>& images) {
  Netlink nl;
  if (!nl.ok()) return false;
  const uint8_t proto = nfproto(family);
  auto image = [&](const std::string& table) -> TableImage* {
    for (auto& i : images) {
      if (i.table == table) return &i;
    }
    return nullptr;
  };
  for (auto& i : images) i.table_attrs.clear(), i.chains.clear(), i.rules.clear();
  bool ok = nl.dump(NFT_MSG_GETTABLE, proto, [&](const char* attrs, size_t len) {
    std::string name, out;
    for_attrs(attrs, len, [&](const Attr& a) {
      if (a.type == NFTA_TABLE_NAME) name = a.str();
      if (a.type == NFTA_TABLE_NAME || a.type == NFTA_TABLE_FLAGS || a.type == NFTA_TABLE_USERDATA) append_attr(out, a);
    });
    if (TableImage* i = image(name)) i->table_attrs = out;
  });
  ok = ok && nl.dump(NFT_MSG_GETCHAIN, proto, [&](const char* attrs, size_t len) {
    std::string table, out;
    for_attrs(attrs, len, [&](const Attr& a) {
      switch (a.type) {
        case NFTA_CHAIN_TABLE:
          table = a.str();
          [[fallthrough]];
        case NFTA_CHAIN_NAME:
        case NFTA_CHAIN_HOOK:
        case NFTA_CHAIN_POLICY:
        case NFTA_CHAIN_TYPE:
        case NFTA_CHAIN_USERDATA:
          append_attr(out, a);
          break;
        case NFTA_CHAIN_COUNTERS: {  // a base chain with counters gets them again, from zero
          std::string c;
          append_attr(c, a);
          for_attrs(a.data, a.len, [&](const Attr& n) {
            if (n.len == 8) std::memset(c.data() + NLA_HDRLEN + (n.data - a.data), 0, 8);
          });
          out += c;
          break;
        }
        default:
          break;
      }
    });
    if (TableImage* i = image(table)) i->chains.push_back(out);
  });
  ok = ok && nl.dump(NFT_MSG_GETRULE, proto, [&](const char* attrs, size_t len) {
    std::string table, out;
    uint32_t l4proto = 0;
    bool inverted = false;
    for_attrs(attrs, len, [&](const Attr& a) {
      if (a.type == NFTA_RULE_TABLE) table = a.str();
      if (a.type == NFTA_RULE_TABLE || a.type == NFTA_RULE_CHAIN || a.type == NFTA_RULE_USERDATA) append_attr(out, a);
      if (a.type == NFTA_RULE_EXPRESSIONS) copy_expressions(a, out, l4proto, inverted);
    });
    // As iptables-nft: the rule's protocol (0 for none) for the compat layer.
    Messages compat;
    const size_t nest = compat.nest_begin(NFTA_RULE_COMPAT);
    compat.put_u32(NFTA_RULE_COMPAT_PROTO, l4proto);
    compat.put_u32(NFTA_RULE_COMPAT_FLAGS, inverted ? NFT_RULE_COMPAT_F_INV : 0);
    compat.nest_end(nest);
    out.append(compat.bytes().begin(), compat.bytes().end());
    if (TableImage* i = image(table)) i->rules.push_back(out);
  });
  if (!ok) return false;
  for (const auto& i : images) {
    if (i.table_attrs.empty()) return false;
  }
  return true;
}

bool nft_replay(Family family, const std::vector<TableImage>& images) {
  Netlink nl;
  if (!nl.ok()) return false;
  const auto generation = ruleset_generation(nl);
  if (!generation) return false;
  const uint8_t proto = nfproto(family);
  Batch batch(nl, generation);
  Messages& m = batch.m;
  // Only the last message asks for an acknowledgement (thousands of rules
  // would overflow the socket with them); an error comes back for any.
  size_t left = 0;
  for (const auto& i : images) left += 1 + i.chains.size() + i.rules.size();
  auto add = [&](int type, uint16_t flags, const std::string& attrs) {
    const uint16_t ack = --left == 0 ? NLM_F_ACK : 0;
    const size_t at = m.begin(nft_type(type), NLM_F_REQUEST | ack | flags, nl.next_seq(), proto);
    m.put_bytes(attrs);
    m.end(at);
  };
  for (const auto& i : images) {
    add(NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_EXCL, i.table_attrs);  // refused if the table exists
    for (const auto& c : i.chains) add(NFT_MSG_NEWCHAIN, NLM_F_CREATE, c);
    for (const auto& r : i.rules) add(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, r);
  }
  return batch.commit(1);
}

}  // namespace

const ChainView* TableView::find(std::string_view chain) const {
  for (const auto& c : chains) {
    if (c.name == chain) return &c;
  }
  return nullptr;
}

const TableView* TablesView::find(std::string_view table) const {
  for (const auto& t : tables) {
    if (t.name == table) return &t;
  }
  return nullptr;
}

std::set<std::string> TablesView::table_names() const {
  std::set<std::string> out;
  for (const auto& t : tables) out.insert(t.name);
  return out;
}

bool TablesView::holds_rules() const {
  for (const auto& t : tables) {
    for (const auto& c : t.chains) {
      if (!c.builtin || c.rules > 0) return true;
    }
  }
  return false;
}

bool TablesView::has_istio_state() const {
  for (const auto& t : tables) {
    for (const auto& c : t.chains) {
      if (is_istio(c.name)) return true;
    }
  }
  return false;
}

std::map<std::string, std::set<std::string>> TablesView::istio_chains() const {
  std::map<std::string, std::set<std::string>> out;
  for (const auto& t : tables) {
    for (const auto& c : t.chains) {
      if (is_istio(c.name)) out[t.name].insert(c.name);
    }
  }
  return out;
}

size_t TablesView::istio_jumps() const {
  size_t n = 0;
  for (const auto& t : tables) n += t.istio_jumps;
  return n;
}

TablesView view_of(const SavedRuleset& saved) {
  TablesView view;
  for (const auto& st : saved.tables) {
    TableView t{st.name, {}, 0};
    for (const auto& c : st.chains) {
      t.chains.push_back(ChainView{c.name, c.builtin, c.rules.size()});
      if (is_istio(c.name)) continue;
      for (const auto& r : c.rules) t.istio_jumps += is_istio(rule_target(r)) ? 1 : 0;
    }
    view.tables.push_back(std::move(t));
  }
  return view;
}

std::map<std::pair<Family, bool>, std::optional<TablesView>> KernelTables::read_all(bool /*istio_rules*/) {
  std::map<std::pair<Family, bool>, std::optional<TablesView>> out;
  for (Family f : {Family::V4, Family::V6}) {
    for (bool legacy : {false, true}) out[{f, legacy}] = read(f, legacy);
  }
  return out;
}

NetnsKernelTables::NetnsKernelTables(int netns_fd) : netns_fd_(netns_fd) {}

std::optional<TablesView> NetnsKernelTables::read(Family family, bool legacy) {
  return in_netns<std::optional<TablesView>>(netns_fd_, std::nullopt, [&]() -> std::optional<TablesView> {
    if (legacy) return family == Family::V4 ? read_legacy<V4Legacy>() : read_legacy<V6Legacy>();
    Netlink nl;
    if (!nl.ok()) return std::nullopt;
    return read_nft(nl, family);
  });
}

std::map<std::pair<Family, bool>, std::optional<TablesView>> NetnsKernelTables::read_all(bool istio_rules) {
  using All = std::map<std::pair<Family, bool>, std::optional<TablesView>>;
  return in_netns<All>(netns_fd_, All{}, [&] {
    All out;
    Netlink nl;
    for (Family f : {Family::V4, Family::V6}) {
      out[{f, true}] = f == Family::V4 ? read_legacy<V4Legacy>() : read_legacy<V6Legacy>();
      out[{f, false}] = nl.ok() ? read_nft(nl, f, nullptr, istio_rules) : std::nullopt;
    }
    return out;
  });
}

bool NetnsKernelTables::remove_if_empty(Family family, const std::string& table) {
  return in_netns<bool>(netns_fd_, false, [&] {
    Netlink nl;
    if (!nl.ok()) return false;
    const auto view = read_nft(nl, family);
    const TableView* t = view ? view->find(table) : nullptr;
    if (t == nullptr) return false;
    for (const auto& c : t->chains) {
      if (!c.builtin || c.rules > 0) return false;
    }
    // One transaction: its base chains (each refused if it still has a rule
    // or a reference: NLM_F_NONREC), then the table (refused if anything is
    // left in it). A refusal aborts the whole batch.
    IstioRemoval r;
    r.tables.push_back(t);
    const bool removed = commit_removal(nl, std::nullopt, {{family, r}});
    spdlog::debug("{} nf_tables table {} {}", family_name(family), table, removed ? "removed" : "kept");
    return removed;
  });
}

void NetnsKernelTables::remove_istio_nft(std::vector<IstioNftRemoval>& removals) {
  in_netns<bool>(netns_fd_, false, [&] {
    Netlink nl;
    if (!nl.ok() || removals.empty()) return false;
    const auto generation = ruleset_generation(nl);
    if (!generation) return false;
    std::vector<TablesView> views;  // IstioRemoval points into them
    views.reserve(removals.size());
    std::vector<std::pair<Family, IstioRemoval>> all;
    for (const auto& want : removals) {
      std::vector<NftRule> rules;
      auto view = read_nft(nl, want.family, &rules, /*istio_rules=*/false);
      if (!view || view->istio_chains() != want.chains || view->istio_jumps() != want.jumps) return false;
      views.push_back(std::move(*view));
      const TablesView& v = views.back();
      IstioRemoval r;
      std::map<std::string, size_t> kept;  // table -> rules and chains that stay
      for (const auto& rule : rules) {
        if (is_istio(rule.chain)) continue;
        if (rule.jumps_to_istio) {
          r.jumps.push_back(rule);
        } else {
          ++kept[rule.table];
        }
      }
      for (const auto& t : v.tables) {
        for (const auto& c : t.chains) {
          if (is_istio(c.name)) {
            r.istio_chains.emplace_back(t.name, c.name);
          } else if (!c.builtin) {
            ++kept[t.name];
          }
        }
        if (want.drop_if_empty.count(t.name) && kept[t.name] == 0) r.tables.push_back(&t);
      }
      all.emplace_back(want.family, std::move(r));
    }
    // A table to drop may still hold a set or an object these views do not
    // list: the kernel then refuses the table (NLM_F_NONREC) and the whole
    // transaction, which is tried again keeping the tables.
    bool done = commit_removal(nl, *generation, all);
    if (!done) {
      bool any = false;
      for (auto& [family, r] : all) any |= !r.tables.empty(), r.tables.clear();
      if (any) done = commit_removal(nl, *generation, all);
    }
    for (auto& want : removals) want.done = done;
    spdlog::debug("nf_tables: ISTIO_* chains of {} families {} in one transaction", removals.size(),
                  done ? "removed" : "not removed");
    return done;
  });
}

std::optional<std::vector<TableImage>> NetnsKernelTables::image_before(Family family, bool legacy,
                                                                       const std::vector<std::string>& tables) {
  using R = std::optional<std::vector<TableImage>>;
  return in_netns<R>(netns_fd_, std::nullopt, [&]() -> R {
    if (legacy) return family == Family::V4 ? legacy_before<V4Legacy>(tables) : legacy_before<V6Legacy>(tables);
    return nft_before(family, tables);
  });
}

bool NetnsKernelTables::image_after(Family family, bool legacy, std::vector<TableImage>& images) {
  return in_netns<bool>(netns_fd_, false, [&] {
    if (legacy) return family == Family::V4 ? legacy_after<V4Legacy>(images) : legacy_after<V6Legacy>(images);
    return nft_after(family, images);
  });
}

bool NetnsKernelTables::replay(Family family, bool legacy, const std::vector<TableImage>& images) {
  return in_netns<bool>(netns_fd_, false, [&] {
    if (legacy) return family == Family::V4 ? legacy_replay<V4Legacy>(images) : legacy_replay<V6Legacy>(images);
    return nft_replay(family, images);
  });
}

bool NetnsKernelTables::replay_back_if(Family family, bool legacy, const std::vector<TableImage>& images,
                                       const std::function<bool(const TablesView&)>& check) {
  if (!legacy) return false;
  return in_netns<bool>(netns_fd_, false, [&] {
    return family == Family::V4 ? legacy_swap_back_if<V4Legacy>(images, check)
                                : legacy_swap_back_if<V6Legacy>(images, check);
  });
}

std::optional<int> NetnsKernelTables::lo_address6(bool add) {
  return in_netns<std::optional<int>>(netns_fd_, std::nullopt, [&]() -> std::optional<int> {
    Fd fd(::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE));
    constexpr int lo = 1;  // every namespace's loopback (LOOPBACK_IFINDEX)
    if (fd.get() < 0) return std::nullopt;
    struct {
      nlmsghdr h;
      ifaddrmsg a;
      char attrs[2 * NLA_ALIGN(NLA_HDRLEN + 16)];
    } req{};
    in6_addr six{};
    six.s6_addr[15] = 6;  // ::6
    req.h.nlmsg_type = add ? RTM_NEWADDR : RTM_DELADDR;
    req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | (add ? NLM_F_CREATE | NLM_F_EXCL : 0);
    req.h.nlmsg_seq = 1;
    req.a.ifa_family = AF_INET6;
    req.a.ifa_prefixlen = 128;
    req.a.ifa_scope = RT_SCOPE_UNIVERSE;
    req.a.ifa_index = lo;
    char* at = req.attrs;
    for (uint16_t type : {IFA_LOCAL, IFA_ADDRESS}) {  // as ip sets them for an address without a peer
      auto* nla = reinterpret_cast<nlattr*>(at);
      nla->nla_type = type;
      nla->nla_len = NLA_HDRLEN + sizeof six;
      std::memcpy(at + NLA_HDRLEN, &six, sizeof six);
      at += NLA_ALIGN(nla->nla_len);
    }
    req.h.nlmsg_len = static_cast<uint32_t>(at - reinterpret_cast<char*>(&req));
    sockaddr_nl to{};
    to.nl_family = AF_NETLINK;
    if (::sendto(fd.get(), &req, req.h.nlmsg_len, 0, reinterpret_cast<sockaddr*>(&to), sizeof to) < 0)
      return std::nullopt;
    char buf[4096];
    pollfd p{fd.get(), POLLIN, 0};
    if (::poll(&p, 1, 2000) <= 0) return std::nullopt;
    const ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
    if (n < static_cast<ssize_t>(NLMSG_HDRLEN + sizeof(nlmsgerr))) return std::nullopt;
    const auto* h = reinterpret_cast<const nlmsghdr*>(buf);
    if (h->nlmsg_type != NLMSG_ERROR) return std::nullopt;
    return -reinterpret_cast<const nlmsgerr*>(NLMSG_DATA(h))->error;
  });
}

}  // namespace meshcap::iptables
