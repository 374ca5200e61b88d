// What meshcap knows of the pods it captured, as status prints it and the
// CNI plugin's CHECK and GC read it.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace meshcap {

/// One pod: its record, per part what is really in place, the engines'
/// figures, and "drift" (empty when everything is as applied).
nlohmann::json pod_status(const std::string& name);
/// Names of the pods with a record or pins.
std::vector<std::string> known_pods();

}  // namespace meshcap
