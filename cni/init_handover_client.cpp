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
int not_answered(int fd, int err_fd, const char* why, const char* detail = "") noexcept {
  sys_close(fd);
  static constexpr char kHead[] = "error the node agent took the request and did not answer (";
  static constexpr char kTail[] = "); `meshcap status` shows what it did, `meshcap cleanup` removes it\n";
  write_all(err_fd, kHead, sizeof kHead - 1, false);
  write_all(err_fd, why, length(why), false);
  write_all(err_fd, detail, length(detail), false);
  write_all(err_fd, kTail, sizeof kTail - 1, false);
  return 1;
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
  char room[32];  // an error's text
  {
    Sender s(fd);
    s.put(kInitMagic, sizeof kInitMagic);
    s.field(pin_dir);
    char count[21];
    decimal(static_cast<unsigned long>(argc > 1 ? argc - 1 : 0), count);
    s.field(count);
    for (int i = 1; i < argc; ++i) s.field(argv[i]);
    for (const char* const* e = envp; *e; ++e) s.field(*e);
    if (const long err = s.finish(); err != 0)
      return not_answered(fd, err_fd, "sending the request: ", error_text(err, room));
  }

  // The header: magic and kind, then for "exit" the code and stdout's length.
  char buf[4096];
  size_t have = 0, header = 0;
  unsigned long code = 0, out_left = 0;
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
    if (nfields >= 1 && !fields[0].is(kInitMagic)) return not_answered(fd, err_fd, "malformed answer (not meshcap-init/1)");
    if (nfields == 0 && have >= sizeof kInitMagic) return not_answered(fd, err_fd, "malformed answer (not meshcap-init/1)");
    if (nfields >= 2 && fields[1].is("local")) {
      sys_close(fd);
      return -1;
    }
    if (nfields >= 2 && !fields[1].is("exit")) return not_answered(fd, err_fd, "malformed answer (neither local nor exit)");
    if (nfields == 4) {
      if (!parse_decimal(fields[2], 255, code) || !parse_decimal(fields[3], kMaxStdout, out_left))
        return not_answered(fd, err_fd, "malformed answer (no exit code and stdout length)");
      header = at;
      break;
    }
    if (have == sizeof buf) return not_answered(fd, err_fd, "malformed answer (no end to its header)");
    const char* why = nullptr;
    const long r = receive(fd, buf + have, sizeof buf - have, why, room);
    if (r < 0) return not_answered(fd, err_fd, why);
    if (r == 0) return not_answered(fd, err_fd, have == 0 ? "no answer" : "malformed answer (it ends in its header)");
    have += static_cast<size_t>(r);
  }

  // The rest as it comes: stdout's bytes first, stderr's to the end.
  const auto pass_on = [&](const char* p, size_t n) {
    const size_t k = n < out_left ? n : out_left;
    write_all(out_fd, p, k, false);
    out_left -= k;
    write_all(err_fd, p + k, n - k, false);
  };
  pass_on(buf + header, have - header);
  for (;;) {
    const char* why = nullptr;
    const long r = receive(fd, buf, sizeof buf, why, room);
    if (r < 0) return not_answered(fd, err_fd, why);
    if (r == 0) break;
    pass_on(buf, static_cast<size_t>(r));
  }
  if (out_left > 0) return not_answered(fd, err_fd, "malformed answer (it ends before its stdout)");
  sys_close(fd);
  return static_cast<int>(code);
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

}  // namespace meshcap::cni
