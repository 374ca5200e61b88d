// The caller's side of `meshcap init`'s hand-over (init_handover.h).
//
// On x86-64 this runs at the executable's entry point, before the C library
// has started (agent/start.cpp): no thread pointer yet (so no errno, no
// stack protector), no resolved string functions (glibc picks memcpy,
// strlen and the like at start-up), no heap. Hence system calls made here
// directly and string loops of its own; the file is compiled freestanding
// (cni/CMakeLists.txt) so the compiler does not turn a loop into a call to
// memcpy or memset. Elsewhere it runs from an initialiser in agent/main.cpp,
// after the C library has started, with the same code.
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "init_handover.h"

namespace meshcap::cni {

namespace {

constexpr int kAnswerTimeoutMs = 120'000;    // as an ADD waits for its answer (agent_client.cpp)
constexpr unsigned long kMaxStdout = 8ul << 20;

// ---- system calls: the result, or -errno ----

#if defined(__x86_64__)
long sys(long n, long a = 0, long b = 0, long c = 0, long d = 0, long e = 0, long f = 0) noexcept {
  long r;
  register long r10 __asm__("r10") = d;
  register long r8 __asm__("r8") = e;
  register long r9 __asm__("r9") = f;
  __asm__ volatile("syscall"
                   : "=a"(r)
                   : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                   : "rcx", "r11", "memory");
  return r;
}
long sys_poll(pollfd* p, int timeout_ms) noexcept { return sys(SYS_poll, reinterpret_cast<long>(p), 1, timeout_ms); }
#else
// After the C library has started: its wrappers, errno turned into -errno.
long sys(long n, long a = 0, long b = 0, long c = 0, long d = 0, long e = 0, long f = 0) noexcept {
  const long r = ::syscall(n, a, b, c, d, e, f);
  return r < 0 ? -errno : r;
}
long sys_poll(pollfd* p, int timeout_ms) noexcept { return ::poll(p, 1, timeout_ms) < 0 ? -errno : 1; }
#endif

long sys_send(int fd, const char* p, size_t n) noexcept {
  return sys(SYS_sendto, fd, reinterpret_cast<long>(p), static_cast<long>(n), MSG_NOSIGNAL, 0, 0);
}
long sys_recv(int fd, char* p, size_t n) noexcept {
  return sys(SYS_recvfrom, fd, reinterpret_cast<long>(p), static_cast<long>(n), 0, 0, 0);
}
long sys_write(int fd, const char* p, size_t n) noexcept {
  return sys(SYS_write, fd, reinterpret_cast<long>(p), static_cast<long>(n));
}
void sys_close(int fd) noexcept { sys(SYS_close, fd); }

// ---- strings, without the C library ----

size_t length(const char* s) noexcept {
  size_t n = 0;
  while (s[n]) ++n;
  return n;
}
bool equal(const char* a, const char* b) noexcept {
  while (*a && *a == *b) ++a, ++b;
  return *a == *b;
}
bool starts_with(const char* s, const char* prefix) noexcept {
  while (*prefix && *s == *prefix) ++s, ++prefix;
  return *prefix == '\0';
}
void copy(char* to, const char* from, size_t n) noexcept {
  for (size_t i = 0; i < n; ++i) to[i] = from[i];
}
// The value of NAME in `envp` (the first, as getenv takes it), or null.
const char* env_value(const char* const* envp, const char* name) noexcept {
  for (const char* const* e = envp; *e; ++e)
    if (starts_with(*e, name) && (*e)[length(name)] == '=') return *e + length(name) + 1;
  return nullptr;
}
const char* env_or(const char* const* envp, const char* name, const char* fallback) noexcept {
  const char* v = env_value(envp, name);
  return v && *v ? v : fallback;
}

// What strerror says for the errors a hand-over meets; the number otherwise.
const char* error_text(long err, char* room) noexcept {
  switch (err) {
    case EPIPE: return "Broken pipe";
    case ECONNRESET: return "Connection reset by peer";
    case ENOTCONN: return "Transport endpoint is not connected";
    case ETIMEDOUT: return "Connection timed out";
    case ENOMEM: return "Cannot allocate memory";
    case ENOBUFS: return "No buffer space available";
    case ENOENT: return "No such file or directory";
    case EACCES: return "Permission denied";
    default: break;
  }
  static constexpr char kPrefix[] = "error ";
  copy(room, kPrefix, sizeof kPrefix - 1);
  char digits[21];
  size_t n = 0;
  unsigned long v = static_cast<unsigned long>(err);
  do digits[n++] = static_cast<char>('0' + v % 10);
  while ((v /= 10) > 0);
  for (size_t i = 0; i < n; ++i) room[sizeof kPrefix - 1 + i] = digits[n - 1 - i];
  room[sizeof kPrefix - 1 + n] = '\0';
  return room;
}

bool write_all(int fd, const char* p, size_t n, bool to_socket, long* err = nullptr) noexcept {
  while (n > 0) {
    const long w = to_socket ? sys_send(fd, p, n) : sys_write(fd, p, n);
    if (w == -EINTR) continue;
    if (w <= 0) {
      if (err) *err = w < 0 ? -w : EPIPE;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// The request's fields, gathered in a page of stack and sent as it fills.
class Sender {
 public:
  explicit Sender(int fd) noexcept : fd_(fd) {}
  void field(const char* s) noexcept { put(s, length(s) + 1); }
  void put(const char* p, size_t n) noexcept {
    while (err_ == 0 && n > 0) {
      if (len_ == sizeof buf_) flush();
      const size_t k = n < sizeof buf_ - len_ ? n : sizeof buf_ - len_;
      copy(buf_ + len_, p, k);
      len_ += k;
      p += k;
      n -= k;
    }
  }
  // Sends what is left and shuts the sending side: 0, or the error.
  long finish() noexcept {
    flush();
    if (err_ == 0) {
      const long r = sys(SYS_shutdown, fd_, SHUT_WR);
      if (r < 0) err_ = -r;
    }
    return err_;
  }

 private:
  void flush() noexcept {
    if (err_ == 0 && len_ > 0) write_all(fd_, buf_, len_, true, &err_);
    len_ = 0;
  }
  int fd_;
  long err_ = 0;
  size_t len_ = 0;
  char buf_[4096];
};

// `v` in decimal into `out` (room for 21 bytes), NUL-terminated.
void decimal(unsigned long v, char* out) noexcept {
  char tmp[21];
  size_t n = 0;
  do {
    tmp[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v > 0);
  for (size_t i = 0; i < n; ++i) out[i] = tmp[n - 1 - i];
  out[n] = '\0';
}

// A field of the answer's header: `n` bytes at `p`.
struct Field {
  const char* p = nullptr;
  size_t n = 0;
  bool is(const char* s) const noexcept {
    size_t i = 0;
    for (; i < n; ++i)
      if (s[i] != p[i]) return false;
    return s[i] == '\0';
  }
};

// A decimal of digits only, at most `max`.
bool parse_decimal(const Field& f, unsigned long max, unsigned long& v) noexcept {
  if (f.n == 0 || f.n > 12) return false;
  v = 0;
  for (size_t i = 0; i < f.n; ++i) {
    if (f.p[i] < '0' || f.p[i] > '9') return false;
    v = v * 10 + static_cast<unsigned long>(f.p[i] - '0');
  }
  return v <= max;
}

// Up to `n` bytes of the answer: > 0 read, 0 at its end, -1 with `why`.
long receive(int fd, char* p, size_t n, const char*& why, char* room) noexcept {
  for (;;) {
    pollfd pf{fd, POLLIN, 0};
    const long ready = sys_poll(&pf, kAnswerTimeoutMs);
    if (ready == -EINTR) continue;
    if (ready == 0) {
      why = "no answer within 120 s";
      return -1;
    }
    const long r = ready < 0 ? ready : sys_recv(fd, p, n);
    if (r == -EINTR) continue;
    if (r < 0) {
      why = error_text(-r, room);
      return -1;
    }
    return r;
  }
}

// The caller's error when the agent took the request and did not answer it
// in full: exit 1, never a second run of what the agent may have half done.
// `meshcap init` says so on stderr; meshcap-cni gives the runtime a CNI
// error on stdout (code 11, try again later), as agent_client.cpp does.
using NotAnswered = int (*)(int fd, int out_fd, int err_fd, const char* why, const char* detail) noexcept;

// Closes `fd` and writes head, why, detail and tail to `to`: 1.
int say_not_answered(int fd, int to, const char* head, const char* why, const char* detail, const char* tail) noexcept {
  sys_close(fd);
  for (const char* part : {head, why, detail, tail}) write_all(to, part, length(part), false);
  return 1;
}

int init_not_answered(int fd, int, int err_fd, const char* why, const char* detail) noexcept {
  return say_not_answered(fd, err_fd, "error the node agent took the request and did not answer (", why, detail,
                          "); `meshcap status` shows what it did, `meshcap cleanup` removes it\n");
}

int cni_not_answered(int fd, int out_fd, int, const char* why, const char* detail) noexcept {
  // The reasons are this file's own words and error_text's: nothing to escape.
  return say_not_answered(fd, out_fd, "{\"cniVersion\":\"1.1.0\",\"code\":11,\"details\":\"", why, detail,
                          "\",\"msg\":\"the node agent did not answer\"}\n");
}

// Reads the answer to a request of form `magic` from `fd` (closed here):
// "local" gives -1; "exit" passes stdout's bytes to `out_fd` and the rest to
// `err_fd` and gives the code; anything else `failed`. Stdout goes on as it
// comes, or with `whole` only once all of it came (a runtime reads a
// plugin's stdout as one JSON document: a cut answer must leave only the
// error there), held meanwhile in pages of its own.
int read_answer(int fd, const char* magic, int out_fd, int err_fd, NotAnswered failed, bool whole) noexcept {
  char room[32];  // an error's text
  char buf[4096];
  size_t have = 0, header = 0;
  unsigned long code = 0, out_left = 0;
  const auto fail = [&](const char* why, const char* detail = "") { return failed(fd, out_fd, err_fd, why, detail); };
  const char* const not_ours =
      magic == kCniMagic ? "malformed answer (not meshcap-cni/1)" : "malformed answer (not meshcap-init/1)";
  // The header: magic and kind, then for "exit" the code and stdout's length.
  while (header == 0) {
    Field fields[4];
    size_t nfields = 0, at = 0;
    while (nfields < 4) {
      size_t end = at;
      while (end < have && buf[end] != '\0') ++end;
      if (end == have) break;
      fields[nfields++] = Field{buf + at, end - at};
      at = end + 1;
    }
    if (nfields >= 1 && !fields[0].is(magic)) return fail(not_ours);
    if (nfields == 0 && have > length(magic)) return fail(not_ours);
    if (nfields >= 2 && fields[1].is("local")) {
      sys_close(fd);
      return -1;
    }
    if (nfields >= 2 && !fields[1].is("exit")) return fail("malformed answer (neither local nor exit)");
    if (nfields == 4) {
      if (!parse_decimal(fields[2], 255, code) || !parse_decimal(fields[3], kMaxStdout, out_left))
        return fail("malformed answer (no exit code and stdout length)");
      header = at;
      break;
    }
    if (have == sizeof buf) return fail("malformed answer (no end to its header)");
    const char* why = nullptr;
    const long r = receive(fd, buf + have, sizeof buf - have, why, room);
    if (r < 0) return fail(why);
    if (r == 0) return fail(have == 0 ? "no answer" : "malformed answer (it ends in its header)");
    have += static_cast<size_t>(r);
  }

  // The rest: stdout's bytes first, stderr's to the end.
  char* held = nullptr;  // with `whole`: stdout, until all of it came
  const size_t out_len = out_left;
  if (whole && out_len > 0) {
    const long mem = sys(SYS_mmap, 0, static_cast<long>(out_len), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem < 0 && mem > -4096) return fail("no memory for the answer");
    held = reinterpret_cast<char*>(mem);
  }
  const auto pass_on = [&](const char* p, size_t n) {
    const size_t k = n < out_left ? n : out_left;
    if (held)
      copy(held + (out_len - out_left), p, k);
    else
      write_all(out_fd, p, k, false);
    out_left -= k;
    write_all(err_fd, p + k, n - k, false);
  };
  const auto unhold = [&] {
    if (held) sys(SYS_munmap, reinterpret_cast<long>(held), static_cast<long>(out_len));
  };
  pass_on(buf + header, have - header);
  for (;;) {
    const char* why = nullptr;
    const long r = receive(fd, buf, sizeof buf, why, room);
    if (r < 0) return unhold(), fail(why);
    if (r == 0) break;
    pass_on(buf, static_cast<size_t>(r));
  }
  if (out_left > 0) return unhold(), fail("malformed answer (it ends before its stdout)");
  if (held) write_all(out_fd, held, out_len, false);
  unhold();
  sys_close(fd);
  return static_cast<int>(code);
}

bool g_asked = false;  // hand_over_if_asked ran once in this process

}  // namespace

int connect_init_agent(const char* state_dir) noexcept {
  static constexpr char kName[] = "/cni.sock";  // agent_socket_path(), without the heap
  sockaddr_un sa;
  char* at = reinterpret_cast<char*>(&sa);
  for (size_t i = 0; i < sizeof sa; ++i) at[i] = 0;
  sa.sun_family = AF_UNIX;
  const size_t n = length(state_dir);
  if (n + sizeof kName > sizeof sa.sun_path) return -1;
  copy(sa.sun_path, state_dir, n);
  copy(sa.sun_path + n, kName, sizeof kName);
  const long fd = sys(SYS_socket, AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  // No socket file, or nobody listening on it (an agent that stopped).
  if (sys(SYS_connect, fd, reinterpret_cast<long>(&sa), sizeof sa) != 0) {
    sys_close(static_cast<int>(fd));
    return -1;
  }
  return static_cast<int>(fd);
}

int hand_over_init(int fd, int argc, const char* const* argv, const char* const* envp, const char* pin_dir,
                   int out_fd, int err_fd) noexcept {
  Sender s(fd);
  s.put(kInitMagic, sizeof kInitMagic);
  s.field(pin_dir);
  char count[21];
  decimal(static_cast<unsigned long>(argc > 1 ? argc - 1 : 0), count);
  s.field(count);
  for (int i = 1; i < argc; ++i) s.field(argv[i]);
  for (const char* const* e = envp; *e; ++e) s.field(*e);
  if (const long err = s.finish(); err != 0) {
    char room[32];
    return init_not_answered(fd, out_fd, err_fd, "sending the request: ", error_text(err, room));
  }
  return read_answer(fd, kInitMagic, out_fd, err_fd, init_not_answered, false);
}

int hand_over_cni(int fd, const char* const* envp, const char* in, size_t in_len, const char* pin_dir,
                  int out_fd) noexcept {
  Sender s(fd);
  s.put(kCniMagic, sizeof kCniMagic);
  s.field(pin_dir);
  // The forwarded variables the caller has, each as getenv would find it.
  const char* values[sizeof kCniForwarded / sizeof *kCniForwarded];
  unsigned long n = 0;
  for (size_t i = 0; i < sizeof kCniForwarded / sizeof *kCniForwarded; ++i)
    if ((values[i] = env_value(envp, kCniForwarded[i])) != nullptr) ++n;
  char count[21];
  decimal(n, count);
  s.field(count);
  for (size_t i = 0; i < sizeof kCniForwarded / sizeof *kCniForwarded; ++i) {
    if (!values[i]) continue;
    s.put(kCniForwarded[i], length(kCniForwarded[i]));
    s.put("=", 1);
    s.field(values[i]);
  }
  s.put(in, in_len);
  if (const long err = s.finish(); err != 0) {
    char room[32];
    return cni_not_answered(fd, out_fd, STDERR_FILENO, "sending the request: ", error_text(err, room));
  }
  return read_answer(fd, kCniMagic, out_fd, STDERR_FILENO, cni_not_answered, true);
}

int hand_over_if_asked(int argc, const char* const* argv, const char* const* envp) noexcept {
  if (g_asked) return -1;
  g_asked = true;
  if (argc < 2 || !equal(argv[1], "init")) return -1;
  const char* base = argv[0];
  for (const char* p = argv[0]; *p; ++p)
    if (*p == '/') base = p + 1;
  if (equal(base, "istio-iptables")) return -1;  // the personality's own command line
  const char* no_agent = env_value(envp, "MESHCAP_NO_AGENT");
  const char* fault = env_value(envp, "MESHCAP_FAULT_AT");
  if ((no_agent && *no_agent) || (fault && *fault)) return -1;
  for (int i = 2; i < argc; ++i) {
    const char* a = argv[i];
    if (equal(a, "-h") || equal(a, "--help") || equal(a, "-n") || starts_with(a, "--dry-run")) return -1;
  }
  const int fd = connect_init_agent(env_or(envp, "MESHCAP_STATE_DIR", "/run/meshcap"));
  if (fd < 0) return -1;
  return hand_over_init(fd, argc, argv, envp, env_or(envp, "MESHCAP_PIN_DIR", "/sys/fs/bpf/meshcap"), STDOUT_FILENO,
                        STDERR_FILENO);
}

int hand_cni_over_if_asked(int argc, const char* const* argv, const char* const* envp) noexcept {
  if (g_asked) return -1;
  g_asked = true;
  // The installer's commands and VERSION are meshcap-cni-local's (shim.cpp).
  const char* command = env_value(envp, "CNI_COMMAND");
  if (argc > 1 || !command || equal(command, "VERSION")) return -1;
  const int fd = connect_init_agent(env_or(envp, "MESHCAP_STATE_DIR", "/run/meshcap"));
  if (fd < 0) return -1;
  // The runtime's configuration, whole, in pages of its own (no heap yet).
  constexpr size_t kMaxConfig = 8ul << 20;  // what the agent reads at most (agent_client.cpp)
  size_t cap = 64 << 10, len = 0;
  long mem = sys(SYS_mmap, 0, static_cast<long>(cap), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem < 0 && mem > -4096) return cni_not_answered(fd, STDOUT_FILENO, STDERR_FILENO, "reading the configuration: ", "no memory");
  for (;;) {
    if (len == cap) {
      if (cap >= kMaxConfig)
        return cni_not_answered(fd, STDOUT_FILENO, STDERR_FILENO, "the configuration is larger than 8 MiB", "");
      const long grown = sys(SYS_mremap, mem, static_cast<long>(cap), static_cast<long>(cap * 2), MREMAP_MAYMOVE);
      if (grown < 0 && grown > -4096)
        return cni_not_answered(fd, STDOUT_FILENO, STDERR_FILENO, "reading the configuration: ", "no memory");
      mem = grown;
      cap *= 2;
    }
    const long r = sys(SYS_read, STDIN_FILENO, mem + static_cast<long>(len), static_cast<long>(cap - len));
    if (r == -EINTR) continue;
    if (r <= 0) break;  // its end (or an error: what was read, as shim.cpp's read_stdin)
    len += static_cast<size_t>(r);
  }
  const char* in = reinterpret_cast<const char*>(mem);
  const int rc = hand_over_cni(fd, envp, in, len, env_or(envp, "MESHCAP_PIN_DIR", "/sys/fs/bpf/meshcap"), STDOUT_FILENO);
  if (rc >= 0) return rc;

  // The agent sent it back: meshcap-cni-local beside this binary runs it,
  // the configuration as its stdin (shim.cpp's run_locally).
  char room[32];
  const long memfd = sys(SYS_memfd_create, reinterpret_cast<long>("meshcap-cni-stdin"), 0);
  if (memfd < 0 || !write_all(static_cast<int>(memfd), in, len, false) || sys(SYS_lseek, memfd, 0, SEEK_SET) != 0 ||
      sys(SYS_dup3, memfd, STDIN_FILENO, 0) != STDIN_FILENO) {
    static constexpr char kWhy[] = "meshcap-cni: passing stdin on: ";
    write_all(STDERR_FILENO, kWhy, sizeof kWhy - 1, false);
    const char* what = error_text(memfd < 0 ? -memfd : EIO, room);
    write_all(STDERR_FILENO, what, length(what), false);
    write_all(STDERR_FILENO, "\n", 1, false);
    return 1;
  }
  sys_close(static_cast<int>(memfd));
  static constexpr char kLocal[] = "meshcap-cni-local";
  char path[4096 + sizeof kLocal];
  const long n = sys(SYS_readlinkat, AT_FDCWD, reinterpret_cast<long>("/proc/self/exe"), reinterpret_cast<long>(path),
                     4096);
  size_t dir = 0;  // the length of this binary's directory, its '/' included
  for (long i = 0; i < n; ++i)
    if (path[i] == '/') dir = static_cast<size_t>(i) + 1;
  copy(path + dir, kLocal, sizeof kLocal);
  const long err = sys(SYS_execve, reinterpret_cast<long>(path), reinterpret_cast<long>(argv), reinterpret_cast<long>(envp));
  static constexpr char kCannot[] = "meshcap-cni: cannot execute ";
  write_all(STDERR_FILENO, kCannot, sizeof kCannot - 1, false);
  write_all(STDERR_FILENO, path, length(path), false);
  write_all(STDERR_FILENO, ": ", 2, false);
  const char* what = error_text(-err, room);
  write_all(STDERR_FILENO, what, length(what), false);
  write_all(STDERR_FILENO, "\n", 1, false);
  return 1;
}

}  // namespace meshcap::cni
