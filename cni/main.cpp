// meshcap-cni-local: the chained CNI plugin doing its work in its own
// process (see cni_plugin.h), and its installer. The runtime executes
// meshcap-cni (shim.cpp), which hands each command to `meshcap node serve`
// when it listens and executes this binary otherwise:
//   meshcap-cni                     (the runtime calls it: CNI_* and stdin)
//   meshcap-cni install --conf-dir DIR [--bin-dir DIR] [--settings FILE] [--watch]
//   meshcap-cni uninstall --conf-dir DIR [--bin-dir DIR]
// Logs go to stderr, never stdout (stdout is the CNI result).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <iterator>
#include <thread>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "cni_plugin.h"
#include "cni_config.h"
#include "cni_conflist.h"

namespace {

// meshcap-cni, beside this binary (the installer copies both).
std::string plugin_path() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  const std::string self = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
  return self.substr(0, self.rfind('/') + 1) + "meshcap-cni";
}

int installer(int argc, char** argv) {
  CLI::App app{"meshcap-cni installer"};
  app.require_subcommand(1);
  meshcap::cni::InstallOptions o;
  std::string settings_file;
  bool watch = false;
  auto* install = app.add_subcommand("install", "Add meshcap-cni to the primary network's plugin chain");
  install->add_option("--conf-dir", o.conf_dir, "CNI configuration directory")->required();
  install->add_option("--bin-dir", o.bin_dir, "CNI plugin directory (the binary is copied there)");
  install->add_option("--settings", settings_file, "JSON file: the entry's keys (istio flags, mode, exclusions)");
  install->add_flag("--watch", watch, "Keep the entry there when another component rewrites the file");
  std::string conf_dir, bin_dir;
  auto* uninstall = app.add_subcommand("uninstall", "Take meshcap-cni out of the configuration");
  uninstall->add_option("--conf-dir", conf_dir, "CNI configuration directory")->required();
  uninstall->add_option("--bin-dir", bin_dir, "CNI plugin directory (the binary is removed)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (uninstall->parsed()) {
      spdlog::info("{}", meshcap::cni::uninstall_plugin(conf_dir, bin_dir) ? "meshcap-cni removed" : "nothing to remove");
      return 0;
    }
    o.source_binary = plugin_path();
    if (!settings_file.empty()) o.settings = meshcap::cni::read_plugin_settings(settings_file, "--settings");
    do {
      if (auto f = meshcap::cni::install_plugin(o); !f.empty()) spdlog::info("meshcap-cni added to {}", f);
      if (watch) std::this_thread::sleep_for(std::chrono::seconds(1));
    } while (watch);
    return 0;
  } catch (const meshcap::UsageError& e) {
    spdlog::error("{}", e.what());
    return 2;
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  spdlog::set_default_logger(spdlog::stderr_color_mt("meshcap-cni"));
  spdlog::set_pattern("%^%l%$ meshcap-cni %v");
  if (argc > 1) return installer(argc, argv);
  const std::string in{std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>()};
  auto getenv = [](const std::string& name) -> std::optional<std::string> {
    const char* v = std::getenv(name.c_str());
    return v ? std::optional<std::string>(v) : std::nullopt;
  };
  const auto reply = meshcap::cni::run(getenv, in);
  std::cout << reply.stdout_text << std::flush;
  return reply.exit_code;
}
