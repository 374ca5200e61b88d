// Table images kept between runs: what iptables-restore made of a payload in
// tables that were in a state a replay can start from (kernel_tables.h),
// stored under the state directory and keyed by everything that decides
// those bytes (the payload, the backend binary, the kernel), so that the
// next pod with the same flags gets them without running iptables-restore.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "backend.h"
#include "kernel_tables.h"

namespace meshcap::iptables {

/// The text an image is keyed by: format version, family, backend, the
/// restore binary's file (path, size, mtime), the kernel's release, payload.
std::string image_key(const Backend& backend, const std::string& payload_text);

/// The images stored for `key` in `dir`, if any (a file whose key differs,
/// or that cannot be read whole, counts as none).
std::optional<std::vector<TableImage>> load_images(const std::string& dir, const std::string& key);

/// Stores `images` for `key` in `dir` (write, then rename); best effort.
void save_images(const std::string& dir, const std::string& key, const std::vector<TableImage>& images);

/// True when `images` (taken around one restore of `payload`) hold exactly
/// what the payload adds: as many rules, and chains, and nothing else.
bool images_match_payload(const std::vector<TableImage>& images, bool legacy, const RestorePayload& payload);

}  // namespace meshcap::iptables
