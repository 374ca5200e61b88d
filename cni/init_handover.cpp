#include "init_handover.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "agent_client.h"

namespace meshcap::cni {

namespace {

constexpr char kMagic[] = "meshcap-init/1";  // sent with its NUL: sizeof kMagic bytes
constexpr int kAnswerTimeoutMs = 120'000;    // as an ADD waits for its answer (agent_client.cpp)
constexpr unsigned long kMaxStdout = 8ul << 20;

// The caller's side below runs before the C++ runtime is set up: system
// calls and the C library's string functions only, buffers on the stack.

bool write_all(int fd, const char* p, size_t n, bool to_socket) noexcept {
  while (n > 0) {
    const ssize_t w = to_socket ? ::send(fd, p, n, MSG_NOSIGNAL) : ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// The request's fields, gathered in a page of stack and sent as it fills.
class Sender {
 public:
  explicit Sender(int fd) noexcept : fd_(fd) {}
  void field(const char* s) noexcept { put(s, std::strlen(s) + 1); }
  void put(const char* p, size_t n) noexcept {
    while (ok_ && n > 0) {
      if (len_ == sizeof buf_) flush();
      const size_t k = std::min(n, sizeof buf_ - len_);
      std::memcpy(buf_ + len_, p, k);
      len_ += k;
      p += k;
      n -= k;
    }
  }
  // Sends what is left and shuts the sending side: false when either failed.
  bool finish() noexcept {
    flush();
    return ok_ && ::shutdown(fd_, SHUT_WR) == 0;
  }

 private:
  void flush() noexcept {
    if (ok_ && len_ > 0) ok_ = write_all(fd_, buf_, len_, true);
    len_ = 0;
  }
  int fd_;
  bool ok_ = true;
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

// A decimal of digits only, at most `max`.
bool parse_decimal(std::string_view s, unsigned long max, unsigned long& v) noexcept {
  if (s.empty() || s.size() > 12) return false;
  v = 0;
  for (const char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<unsigned long>(c - '0');
  }
  return v <= max;
}

// Up to `n` bytes of the answer: > 0 read, 0 at its end, -1 with `why`.
ssize_t receive(int fd, char* p, size_t n, const char*& why) noexcept {
  for (;;) {
    pollfd pf{fd, POLLIN, 0};
    const int ready = ::poll(&pf, 1, kAnswerTimeoutMs);
    if (ready < 0 && errno == EINTR) continue;
    if (ready == 0) {
      why = "no answer within 120 s";
      return -1;
    }
    const ssize_t r = ready < 0 ? -1 : ::recv(fd, p, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) why = std::strerror(errno);
    return r;
  }
}

// The caller's error when the agent took the request and did not answer it
// in full: exit 1, never a second run of what the agent may have half done.
int not_answered(int fd, int err_fd, const char* why, const char* detail = "") noexcept {
  ::close(fd);
  static constexpr char kHead[] = "error the node agent took the request and did not answer (";
  static constexpr char kTail[] = "); `meshcap status` shows what it did, `meshcap cleanup` removes it\n";
  write_all(err_fd, kHead, sizeof kHead - 1, false);
  write_all(err_fd, why, std::strlen(why), false);
  write_all(err_fd, detail, std::strlen(detail), false);
  write_all(err_fd, kTail, sizeof kTail - 1, false);
  return 1;
}

}  // namespace

bool is_init_request(std::string_view text) {
  return text.substr(0, sizeof kMagic) == std::string_view(kMagic, sizeof kMagic);
}

std::optional<InitRequest> parse_init_request(std::string_view text) {
  if (!is_init_request(text) || text.back() != '\0') return std::nullopt;
  std::vector<std::string_view> fields;
  for (size_t at = 0; at < text.size();) {
    const size_t end = text.find('\0', at);
    fields.push_back(text.substr(at, end - at));
    at = end + 1;
  }
  unsigned long n = 0;
  if (fields.size() < 3 || !parse_decimal(fields[2], fields.size() - 3, n)) return std::nullopt;
  InitRequest r;
  r.pin_dir = fields[1];
  r.argv.assign(fields.begin() + 3, fields.begin() + 3 + static_cast<long>(n));
  for (auto it = fields.begin() + 3 + static_cast<long>(n); it != fields.end(); ++it) {
    const size_t eq = it->find('=');
    if (eq != std::string_view::npos) r.env.emplace(it->substr(0, eq), it->substr(eq + 1));  // the first stays
  }
  return r;
}

std::string init_answer_text(const InitAnswer& a) {
  std::string out(kMagic, sizeof kMagic);
  if (a.local) return out.append("local", sizeof "local");
  out.append("exit", sizeof "exit");
  out += std::to_string(a.exit_code);
  out += '\0';
  out += std::to_string(a.stdout_text.size());
  out += '\0';
  return out.append(a.stdout_text).append(a.stderr_text);
}

int connect_init_agent(const char* state_dir) noexcept {
  static constexpr char kName[] = "/cni.sock";  // agent_socket_path(), without the heap
  char path[sizeof(sockaddr_un::sun_path)];
  const size_t n = std::strlen(state_dir);
  if (n + sizeof kName > sizeof path) return -1;
  std::memcpy(path, state_dir, n);
  std::memcpy(path + n, kName, sizeof kName);
  return connect_agent(path);
}

int hand_over_init(int fd, int argc, const char* const* argv, const char* const* envp, const char* pin_dir,
                   int out_fd, int err_fd) noexcept {
  {
    Sender s(fd);
    s.put(kMagic, sizeof kMagic);
    s.field(pin_dir);
    char count[21];
    decimal(static_cast<unsigned long>(argc > 1 ? argc - 1 : 0), count);
    s.field(count);
    for (int i = 1; i < argc; ++i) s.field(argv[i]);
    for (const char* const* e = envp; *e; ++e) s.field(*e);
    if (!s.finish()) return not_answered(fd, err_fd, "sending the request: ", std::strerror(errno));
  }

  // The header: magic and kind, then for "exit" the code and stdout's length.
  char buf[4096];
  size_t have = 0, header = 0;
  unsigned long code = 0, out_left = 0;
  while (header == 0) {
    std::string_view fields[4];
    size_t nfields = 0, at = 0;
    while (nfields < 4) {
      const void* nul = std::memchr(buf + at, '\0', have - at);
      if (!nul) break;
      const size_t end = static_cast<size_t>(static_cast<const char*>(nul) - buf);
      fields[nfields++] = std::string_view(buf + at, end - at);
      at = end + 1;
    }
    if (nfields >= 1 && fields[0] != std::string_view(kMagic))
      return not_answered(fd, err_fd, "malformed answer (not meshcap-init/1)");
    if (nfields == 0 && have >= sizeof kMagic) return not_answered(fd, err_fd, "malformed answer (not meshcap-init/1)");
    if (nfields >= 2 && fields[1] == "local") {
      ::close(fd);
      return -1;
    }
    if (nfields >= 2 && fields[1] != "exit") return not_answered(fd, err_fd, "malformed answer (neither local nor exit)");
    if (nfields == 4) {
      if (!parse_decimal(fields[2], 255, code) || !parse_decimal(fields[3], kMaxStdout, out_left))
        return not_answered(fd, err_fd, "malformed answer (no exit code and stdout length)");
      header = at;
      break;
    }
    if (have == sizeof buf) return not_answered(fd, err_fd, "malformed answer (no end to its header)");
    const char* why = nullptr;
    const ssize_t r = receive(fd, buf + have, sizeof buf - have, why);
    if (r < 0) return not_answered(fd, err_fd, why);
    if (r == 0) return not_answered(fd, err_fd, have == 0 ? "no answer" : "malformed answer (it ends in its header)");
    have += static_cast<size_t>(r);
  }

  // The rest as it comes: stdout's bytes first, stderr's to the end.
  const auto pass_on = [&](const char* p, size_t n) {
    const size_t k = std::min<size_t>(n, out_left);
    write_all(out_fd, p, k, false);
    out_left -= k;
    write_all(err_fd, p + k, n - k, false);
  };
  pass_on(buf + header, have - header);
  for (;;) {
    const char* why = nullptr;
    const ssize_t r = receive(fd, buf, sizeof buf, why);
    if (r < 0) return not_answered(fd, err_fd, why);
    if (r == 0) break;
    pass_on(buf, static_cast<size_t>(r));
  }
  if (out_left > 0) return not_answered(fd, err_fd, "malformed answer (it ends before its stdout)");
  ::close(fd);
  return static_cast<int>(code);
}

}  // namespace meshcap::cni
