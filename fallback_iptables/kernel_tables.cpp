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
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <cerrno>
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
  static constexpr int kDomain = AF_INET, kLevel = IPPROTO_IP, kInfo = IPT_SO_GET_INFO, kGet = IPT_SO_GET_ENTRIES;
  static constexpr const char* kNames = "/proc/thread-self/net/ip_tables_names";
};

struct V6Legacy {
  using Info = ip6t_getinfo;
  using Entries = ip6t_get_entries;
  using Entry = ip6t_entry;
  static constexpr int kDomain = AF_INET6, kLevel = IPPROTO_IPV6, kInfo = IP6T_SO_GET_INFO, kGet = IP6T_SO_GET_ENTRIES;
  static constexpr const char* kNames = "/proc/thread-self/net/ip6_tables_names";
};

template <class T>
std::optional<TableView> read_legacy_table(int sock, const std::string& name) {
  for (int attempt = 0; attempt < 3; ++attempt) {
    typename T::Info info{};
    std::strncpy(info.name, name.c_str(), sizeof(info.name) - 1);
    socklen_t len = sizeof(info);
    if (::getsockopt(sock, T::kLevel, T::kInfo, &info, &len) != 0) return std::nullopt;

    std::vector<char> buf(sizeof(typename T::Entries) + info.size);
    auto* get = reinterpret_cast<typename T::Entries*>(buf.data());
    std::strncpy(get->name, name.c_str(), sizeof(get->name) - 1);
    get->size = info.size;
    len = static_cast<socklen_t>(buf.size());
    if (::getsockopt(sock, T::kLevel, T::kGet, get, &len) != 0) {
      if (errno == EAGAIN) continue;  // the table changed between the two calls
      return std::nullopt;
    }
    const char* blob = reinterpret_cast<const char*>(get->entrytable);
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
  return std::nullopt;
}

template <class T>
std::optional<TablesView> read_legacy() {
  std::ifstream names(T::kNames);
  TablesView view;
  if (!names) {
    // Without the file the legacy tables are not in this kernel (module not
    // loaded): nothing can be held there.
    if (errno == ENOENT) return view;
    return std::nullopt;
  }
  std::vector<std::string> tables;
  for (std::string line; std::getline(names, line);) {
    if (!line.empty()) tables.push_back(line);
  }
  if (tables.empty()) return view;
  Fd sock(::socket(T::kDomain, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW));
  if (sock.get() < 0) return std::nullopt;
  for (const auto& name : tables) {
    auto t = read_legacy_table<T>(sock.get(), name);
    if (!t) return std::nullopt;
    view.tables.push_back(std::move(*t));
  }
  return view;
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
  bool dump(int msg, uint8_t family, const std::function<void(const char*, size_t)>& each) {
    for (int attempt = 0; attempt < 3; ++attempt) {
      Messages m;
      const uint32_t seq = ++seq_;
      m.end(m.begin(nft_type(msg), NLM_F_REQUEST | NLM_F_DUMP, seq, family));
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

// The chain a rule's immediate verdict jumps (or goes) to, if any.
void jump_targets(const char* exprs, size_t len, std::vector<std::string>& out) {
  for_attrs(exprs, len, [&](const Attr& elem) {
    if (elem.type != NFTA_LIST_ELEM) return;
    std::string name;
    const char* data = nullptr;
    size_t data_len = 0;
    for_attrs(elem.data, elem.len, [&](const Attr& a) {
      if (a.type == NFTA_EXPR_NAME) name = a.str();
      if (a.type == NFTA_EXPR_DATA) data = a.data, data_len = a.len;
    });
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

std::optional<TablesView> read_nft(Netlink& nl, Family family, std::vector<NftRule>* rules = nullptr) {
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
  ok = nl.dump(NFT_MSG_GETRULE, proto, [&](const char* attrs, size_t len) {
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
    ++chain_of(*tv, chain, false).rules;
    size_t to_istio = 0;
    if (!is_istio(chain)) {
      for (const auto& j : jumps) to_istio += is_istio(j) ? 1 : 0;
      tv->istio_jumps += to_istio;
    }
    if (rules != nullptr) rules->push_back(NftRule{t, chain, handle, to_istio > 0});
  });
  if (!ok) return std::nullopt;
  return view;
}

// One transaction: every chain of the table (each refused if it still has a
// rule or a reference: NLM_F_NONREC), then the table (refused if anything is
// left in it). A refusal aborts the whole batch.
bool delete_empty_table(Netlink& nl, Family family, const TableView& t) {
  const uint8_t proto = nfproto(family);
  Messages m;
  const uint32_t first = nl.next_seq();
  m.end(m.begin(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, first, AF_UNSPEC, NFNL_SUBSYS_NFTABLES));
  size_t acks = 0;
  for (const auto& c : t.chains) {
    const size_t at = m.begin(nft_type(NFT_MSG_DELCHAIN), NLM_F_REQUEST | NLM_F_ACK | NLM_F_NONREC, nl.next_seq(), proto);
    m.put_str(NFTA_CHAIN_TABLE, t.name);
    m.put_str(NFTA_CHAIN_NAME, c.name);
    m.end(at);
    ++acks;
  }
  const size_t at = m.begin(nft_type(NFT_MSG_DELTABLE), NLM_F_REQUEST | NLM_F_ACK | NLM_F_NONREC, nl.next_seq(), proto);
  m.put_str(NFTA_TABLE_NAME, t.name);
  m.end(at);
  ++acks;
  const uint32_t last = nl.next_seq();
  m.end(m.begin(NFNL_MSG_BATCH_END, NLM_F_REQUEST, last, AF_UNSPEC, NFNL_SUBSYS_NFTABLES));
  if (!nl.send(m)) return false;
  return nl.receive(first, last, [](const nlmsghdr*) {}, acks);
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

bool commit_removal(Netlink& nl, Family family, uint32_t generation, const IstioRemoval& r) {
  const uint8_t proto = nfproto(family);
  Messages m;
  const uint32_t first = nl.next_seq();
  const size_t begin = m.begin(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, first, AF_UNSPEC, NFNL_SUBSYS_NFTABLES);
  m.put_u32(NFNL_BATCH_GENID, generation);
  m.end(begin);
  size_t acks = 0;
  auto msg = [&](int type, uint16_t extra_flags) {
    ++acks;
    return m.begin(nft_type(type), NLM_F_REQUEST | NLM_F_ACK | extra_flags, nl.next_seq(), proto);
  };
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
  const uint32_t last = nl.next_seq();
  m.end(m.begin(NFNL_MSG_BATCH_END, NLM_F_REQUEST, last, AF_UNSPEC, NFNL_SUBSYS_NFTABLES));
  if (!nl.send(m)) return false;
  return nl.receive(first, last, [](const nlmsghdr*) {}, acks);
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

std::map<std::pair<Family, bool>, std::optional<TablesView>> KernelTables::read_all() {
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

std::map<std::pair<Family, bool>, std::optional<TablesView>> NetnsKernelTables::read_all() {
  using All = std::map<std::pair<Family, bool>, std::optional<TablesView>>;
  return in_netns<All>(netns_fd_, All{}, [&] {
    All out;
    Netlink nl;
    for (Family f : {Family::V4, Family::V6}) {
      out[{f, true}] = f == Family::V4 ? read_legacy<V4Legacy>() : read_legacy<V6Legacy>();
      out[{f, false}] = nl.ok() ? read_nft(nl, f) : std::nullopt;
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
    const bool removed = delete_empty_table(nl, family, *t);
    spdlog::debug("{} nf_tables table {} {}", family_name(family), table, removed ? "removed" : "kept");
    return removed;
  });
}

bool NetnsKernelTables::remove_istio_nft(Family family, const std::map<std::string, std::set<std::string>>& chains,
                                         size_t jumps, const std::set<std::string>& drop_if_empty) {
  return in_netns<bool>(netns_fd_, false, [&] {
    Netlink nl;
    if (!nl.ok()) return false;
    const auto generation = ruleset_generation(nl);
    if (!generation) return false;
    std::vector<NftRule> rules;
    const auto view = read_nft(nl, family, &rules);
    if (!view || view->istio_chains() != chains || view->istio_jumps() != jumps) return false;

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
    for (const auto& t : view->tables) {
      for (const auto& c : t.chains) {
        if (is_istio(c.name)) {
          r.istio_chains.emplace_back(t.name, c.name);
        } else if (!c.builtin) {
          ++kept[t.name];
        }
      }
      if (drop_if_empty.count(t.name) && kept[t.name] == 0) r.tables.push_back(&t);
    }
    // A table to drop may still hold a set or an object this view does not
    // list: the kernel then refuses the table (NLM_F_NONREC) and the whole
    // transaction, which is tried again keeping the tables.
    bool done = commit_removal(nl, family, *generation, r);
    if (!done && !r.tables.empty()) {
      r.tables.clear();
      done = commit_removal(nl, family, *generation, r);
    }
    spdlog::debug("{} nf_tables: ISTIO_* chains {} in one transaction", family_name(family),
                  done ? "removed" : "not removed");
    return done;
  });
}

}  // namespace meshcap::iptables
