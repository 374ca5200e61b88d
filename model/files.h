// Reading a file whole, in one go (records and lists can be large; reading
// through a stream iterator costs a call per character).
#pragma once

#include <optional>
#include <string>

namespace meshcap {

/// The whole content of `path`; nullopt when it cannot be opened or read.
std::optional<std::string> read_whole_file(const std::string& path);

}  // namespace meshcap
