#include "cni_conflist.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <vector>

#include "files.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace meshcap::cni {

namespace {

constexpr const char* kType = "meshcap-cni";
// What goes into the plugin directory: the plugin, and what it executes
// when no agent listens.
constexpr const char* kBinaries[] = {"meshcap-cni", "meshcap-cni-local"};

std::string read_file(const std::string& path) {
  auto text = read_whole_file(path);
  if (!text) throw std::runtime_error("cannot read " + path);
  return std::move(*text);
}

void write_atomically(const std::string& path, const std::string& text, mode_t mode) {
  const std::string tmp = path + ".meshcap-tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out) throw std::runtime_error("cannot write " + tmp);
  }
  chmod(tmp.c_str(), mode);
  if (std::rename(tmp.c_str(), path.c_str())) {
    std::remove(tmp.c_str());
    throw std::runtime_error("cannot replace " + path);
  }
}

std::vector<std::string> config_files(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string ext = e.path().extension();
    if (e.is_regular_file(ec) && (ext == ".conflist" || ext == ".conf" || ext == ".json"))
      out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

bool is_ours(const json& plugin) { return plugin.is_object() && plugin.value("type", "") == kType; }

}  // namespace

std::optional<std::string> primary_config(const std::string& conf_dir) {
  auto files = config_files(conf_dir);
  if (files.empty()) return std::nullopt;
  return files.front();
}

std::string install_plugin(const InstallOptions& o) {
  if (!o.bin_dir.empty()) {
    // meshcap-cni and, when it is beside it, meshcap-cni-local (what the
    // plugin executes when no agent listens).
    const fs::path from = fs::path(o.source_binary).parent_path();
    for (const char* name : kBinaries) {
      const fs::path src = name == kBinaries[0] ? fs::path(o.source_binary) : from / name;
      std::error_code ec;
      if (name != kBinaries[0] && !fs::exists(src, ec)) continue;
      const fs::path dest = fs::path(o.bin_dir) / name;
      const bool same = fs::exists(dest, ec) && fs::file_size(dest, ec) == fs::file_size(src) &&
                        read_file(dest) == read_file(src);
      if (!same) write_atomically(dest.string(), read_file(src), 0755);
    }
  }
  const auto file = primary_config(o.conf_dir);
  if (!file) throw std::runtime_error("no CNI network configuration in " + o.conf_dir + " to add meshcap-cni to");
  json conf;
  try {
    conf = json::parse(read_file(*file));
  } catch (const json::exception& e) {
    throw std::runtime_error("unreadable CNI configuration " + *file + ": " + e.what());
  }
  json entry = o.settings;
  entry["type"] = kType;
  std::string path = *file;
  if (!conf.contains("plugins")) {
    // A single plugin (.conf): the chain it becomes.
    json list = {{"cniVersion", conf.value("cniVersion", "1.0.0")}, {"name", conf.value("name", "")},
                 {"plugins", json::array({conf})}};
    conf = list;
    path = fs::path(*file).replace_extension(".conflist").string();
  }
  auto& plugins = conf["plugins"];
  auto it = std::find_if(plugins.begin(), plugins.end(), is_ours);
  if (it != plugins.end() && *it == entry && it + 1 == plugins.end() && path == *file) return "";
  if (it != plugins.end()) plugins.erase(it);
  plugins.push_back(entry);
  write_atomically(path, conf.dump(2) + "\n", 0644);
  if (path != *file) std::remove(file->c_str());
  return path;
}

bool uninstall_plugin(const std::string& conf_dir, const std::string& bin_dir) {
  bool removed = false;
  for (const auto& file : config_files(conf_dir)) {
    json conf;
    try {
      conf = json::parse(read_file(file));
    } catch (const std::exception&) {
      continue;
    }
    if (!conf.contains("plugins") || !conf["plugins"].is_array()) continue;
    auto& plugins = conf["plugins"];
    const auto before = plugins.size();
    plugins.erase(std::remove_if(plugins.begin(), plugins.end(), is_ours), plugins.end());
    if (plugins.size() == before) continue;
    write_atomically(file, conf.dump(2) + "\n", 0644);
    removed = true;
  }
  if (!bin_dir.empty())
    for (const char* name : kBinaries) removed |= std::remove((bin_dir + "/" + name).c_str()) == 0;
  return removed;
}

}  // namespace meshcap::cni
