#pragma once
// Session parameters by name (startup parameters, ParameterStatus values, settings a client made),
// without the connection that carries them: the session's bookkeeping uses them with no socket.
#include <map>
#include <string>
#include <string_view>

namespace pgsluice::server {

// Case-insensitive, as GUC names are.
struct GucNameLess {
  bool operator()(const std::string& a, const std::string& b) const;
};
using ParameterMap = std::map<std::string, std::string, GucNameLess>;
bool same_guc_name(std::string_view a, std::string_view b);

// The reported parameters whose value a client sees restored on every connection it is given.
bool is_tracked_parameter(std::string_view name);
// "name=value\0name=value\0..." in map order: equal exactly when two parameter sets are equal.
std::string parameter_fingerprint(const ParameterMap& parameters);

}  // namespace pgsluice::server
