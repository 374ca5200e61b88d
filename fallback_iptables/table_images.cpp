#include "table_images.h"

#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

namespace meshcap::iptables {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kMagic = "meshcap-table-images 2\n";
constexpr size_t kMaxImages = 64;

class Writer {
 public:
  // Each returns true, so that one field list (fields()) writes and reads.
  bool u32(uint32_t v) {
    out_.append(reinterpret_cast<const char*>(&v), sizeof v);
    return true;
  }
  bool str(const std::string& s) {
    u32(static_cast<uint32_t>(s.size()));
    out_ += s;
    return true;
  }
  bool u32s(const std::vector<uint32_t>& v) {
    u32(static_cast<uint32_t>(v.size()));
    for (uint32_t x : v) u32(x);
    return true;
  }
  bool strs(const std::vector<std::string>& v) {
    u32(static_cast<uint32_t>(v.size()));
    for (const auto& x : v) str(x);
    return true;
  }
  const std::string& bytes() const { return out_; }

 private:
  std::string out_;
};

// Reads the fields straight from the file into their strings (an image can
// be MBs: no copy of the whole file first); `size` bytes are left to read.
class Reader {
 public:
  Reader(std::istream& in, size_t size) : in_(in), left_(size) {}
  bool u32(uint32_t& v) { return bytes(reinterpret_cast<char*>(&v), sizeof v); }
  bool str(std::string& s) {
    uint32_t n = 0;
    if (!u32(n) || n > left_) return false;
    s.resize(n);
    return bytes(s.data(), n);
  }
  bool u32s(std::vector<uint32_t>& v) {
    uint32_t n = 0;
    if (!u32(n) || n > left_ / sizeof(uint32_t)) return false;
    v.resize(n);
    return bytes(reinterpret_cast<char*>(v.data()), n * sizeof(uint32_t));
  }
  bool strs(std::vector<std::string>& v) {
    uint32_t n = 0;
    if (!u32(n) || n > left_) return false;
    v.resize(n);
    for (auto& x : v) {
      if (!str(x)) return false;
    }
    return true;
  }
  bool done() const { return left_ == 0; }

 private:
  bool bytes(char* to, size_t n) {
    if (n > left_) return false;
    if (n > 0 && !in_.read(to, static_cast<std::streamsize>(n))) return false;
    left_ -= n;
    return true;
  }
  std::istream& in_;
  size_t left_;
};

// An image's fields in file order, written (Writer, const image) or read
// (Reader); false when a read runs short.
template <class IO, class Image>
bool fields(IO& io, Image& i) {
  return io.str(i.table) && io.str(i.before) && io.str(i.after) && io.u32(i.valid_hooks) && io.u32(i.num_entries) &&
         io.u32s(i.hook_entry) && io.u32s(i.underflow) && io.u32(i.before_entries) && io.u32s(i.before_hook_entry) &&
         io.u32s(i.before_underflow) && io.str(i.table_attrs) && io.strs(i.chains) && io.strs(i.rules);
}

std::string file_name(const std::string& key) {
  std::ostringstream name;
  name << std::hex << std::hash<std::string>{}(key);
  return "image-" + name.str();
}

// Rule lines (-A, -I) and chain lines (-N) of a payload.
std::pair<size_t, size_t> payload_counts(const RestorePayload& payload) {
  size_t rules = 0, chains = 0;
  for (const auto& t : payload.tables) {
    for (const auto& line : t.lines) {
      if (line.rfind("-A ", 0) == 0 || line.rfind("-I ", 0) == 0) ++rules;
      if (line.rfind("-N ", 0) == 0) ++chains;
    }
  }
  return {rules, chains};
}

}  // namespace

std::string image_key(const Backend& backend, const std::string& payload_text) {
  std::ostringstream key;
  key << kMagic << family_name(backend.family) << ' ' << backend.kind() << ' ' << backend.restore_binary << '\n';
  const std::string path = find_binary(backend.restore_binary);
  struct stat st {};
  if (!path.empty() && ::stat(path.c_str(), &st) == 0) {
    key << path << ' ' << st.st_size << ' ' << st.st_mtim.tv_sec << '.' << st.st_mtim.tv_nsec << '\n';
  } else {
    key << "(binary not found)\n";
  }
  utsname u{};
  if (::uname(&u) == 0) key << u.release << ' ' << u.version << '\n';
  key << payload_text;
  return key.str();
}

std::optional<std::vector<TableImage>> load_images(const std::string& dir, const std::string& key) {
  std::ifstream in((fs::path(dir) / "images" / file_name(key)).string(), std::ios::binary | std::ios::ate);
  if (!in) return std::nullopt;
  const std::streamoff size = in.tellg();
  if (size < 0 || !in.seekg(0)) return std::nullopt;
  Reader r(in, static_cast<size_t>(size));
  std::string stored;
  uint32_t n = 0;
  if (!r.str(stored) || stored != key || !r.u32(n) || n > 16) return std::nullopt;
  std::vector<TableImage> images(n);
  for (auto& i : images) {
    if (!fields(r, i)) return std::nullopt;
  }
  if (!r.done()) return std::nullopt;
  return images;
}

void save_images(const std::string& dir, const std::string& key, const std::vector<TableImage>& images) {
  Writer w;
  w.str(key);
  w.u32(static_cast<uint32_t>(images.size()));
  for (const auto& i : images) fields(w, i);
  std::error_code ec;
  const fs::path at = fs::path(dir) / "images";
  fs::create_directories(at, ec);
  const fs::path file = at / file_name(key);
  // Unique per process and thread: the node agent serves ADDs concurrently.
  static std::atomic<unsigned> serial{0};
  const fs::path tmp = file.string() + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(++serial);
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(w.bytes().data(), static_cast<std::streamsize>(w.bytes().size()));
    if (!out.flush()) {
      fs::remove(tmp, ec);
      return;
    }
  }
  fs::rename(tmp, file, ec);
  if (ec) {
    fs::remove(tmp, ec);
    return;
  }
  spdlog::debug("kept the tables' image for the next pod with this payload: {}", file.string());
  // A cache, not a record: the oldest go beyond kMaxImages payloads.
  std::vector<std::pair<fs::file_time_type, fs::path>> all;
  for (const auto& e : fs::directory_iterator(at, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("image-", 0) == 0 && name.find(".tmp.") == std::string::npos) {
      all.emplace_back(e.last_write_time(ec), e.path());
    }
  }
  if (all.size() <= kMaxImages) return;
  std::sort(all.begin(), all.end());
  for (size_t i = 0; i + kMaxImages < all.size(); ++i) fs::remove(all[i].second, ec);
}

bool images_match_payload(const std::vector<TableImage>& images, bool legacy, const RestorePayload& payload) {
  const auto [rules, chains] = payload_counts(payload);
  if (images.size() != payload.tables.size()) return false;
  size_t got_rules = 0, got_chains = 0, entries_added = 0;
  for (const auto& i : images) {
    if (legacy) {
      const size_t policies = static_cast<size_t>(__builtin_popcount(i.valid_hooks)) + 1;  // and the table's end
      if (i.num_entries < policies) return false;
      entries_added += i.num_entries - policies;
    } else {
      got_rules += i.rules.size();
      for (const auto& c : i.chains) got_chains += c.find("ISTIO_") != std::string::npos ? 1 : 0;
    }
  }
  // Legacy: each rule is one entry, each chain a head and a tail entry.
  if (legacy) return entries_added == rules + 2 * chains;
  return got_rules == rules && got_chains == chains;
}

}  // namespace meshcap::iptables
