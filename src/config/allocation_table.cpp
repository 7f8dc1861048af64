// The connection budget of each backend as `pgsluice --check` prints it and the over-allocation
// error quotes it: every service's share of the server's max_connections, in one fixed-width table.
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "pgsluice/config/config.hpp"

namespace pgsluice::config {

namespace {

std::string pad_right(const std::string& text, std::size_t width) {
  return text.size() >= width ? text : text + std::string(width - text.size(), ' ');
}

std::string pad_left(const std::string& text, std::size_t width) {
  return text.size() >= width ? text : std::string(width - text.size(), ' ') + text;
}

// Column widths after the service name: "  mode" (2 + 11), min, max, replicas, total.
constexpr std::size_t kModeWidth = 13;
constexpr std::size_t kMinWidth = 5;
constexpr std::size_t kMaxWidth = 5;
constexpr std::size_t kReplicasWidth = 12;
constexpr std::size_t kTotalWidth = 7;

}  // namespace

std::string allocation_table(const Config& config, const std::string& backend_name) {
  const auto found = config.backends.find(backend_name);
  if (found == config.backends.end()) return {};
  const BackendConfig& backend = found->second;

  std::vector<const ServiceConfig*> services;
  std::size_t name_width = std::string("service").size();
  for (const auto& service : config.services) {
    if (service.backend != backend_name) continue;
    services.push_back(&service);
    name_width = std::max(name_width, service.name.size());
  }
  const std::size_t label_width = name_width + kModeWidth + kMinWidth + kMaxWidth + kReplicasWidth;

  const auto row = [&](const std::string& name, const std::string& mode, const std::string& min,
                       const std::string& max, const std::string& replicas, const std::string& total) {
    return "  " + pad_right(name, name_width) + "  " + pad_right(mode, kModeWidth - 2) +
           pad_left(min, kMinWidth) + pad_left(max, kMaxWidth) + pad_left(replicas, kReplicasWidth) +
           pad_left(total, kTotalWidth) + "\n";
  };
  const auto summary = [&](const std::string& label, std::int64_t value, const std::string& note = {}) {
    return "  " + pad_right(label, label_width) + pad_left(std::to_string(value), kTotalWidth) + note + "\n";
  };

  std::string out = "backend " + backend.name + " (" + backend.host + ":" + std::to_string(backend.port) +
                    "), server max_connections " + std::to_string(backend.max_connections) + "\n";
  out += row("service", "mode", "min", "max", "x replicas", "total");
  std::int64_t services_total = 0;
  for (const ServiceConfig* service : services) {
    const std::int64_t total = std::int64_t{service->max_connections} * config.replicas;
    services_total += total;
    out +=
        row(service->name, to_string(service->mode), std::to_string(service->min_connections),
            std::to_string(service->max_connections), std::to_string(config.replicas), std::to_string(total));
  }
  const std::int64_t sum = services_total + backend.reserved_connections;
  const std::int64_t limit = backend.max_connections;
  out += summary("services", services_total);
  out += summary("reserved_connections", backend.reserved_connections);
  out += summary("sum", sum,
                 (sum <= limit ? " <= " : " > ") + std::to_string(limit) + " max_connections" +
                     (sum <= limit ? " (ok, " + std::to_string(limit - sum) + " spare)"
                                   : " (over by " + std::to_string(sum - limit) + ")"));
  return out;
}

std::string allocation_table(const Config& config) {
  std::string out;
  for (const auto& [name, backend] : config.backends) {
    if (!out.empty()) out += "\n";
    out += allocation_table(config, name);
  }
  return out;
}

}  // namespace pgsluice::config
