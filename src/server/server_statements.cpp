#include "pgsluice/server/server_statements.hpp"

namespace pgsluice::server {

void ServerStatements::add(const std::string& name) {
  if (auto it = index_.find(name); it != index_.end()) {
    order_.splice(order_.begin(), order_, it->second.at);
    it->second.shape = 0;
    return;
  }
  order_.push_front(name);
  index_.emplace(name, Entry{order_.begin()});
}

void ServerStatements::forget(const std::string& name) {
  stale_.erase(name);
  auto it = index_.find(name);
  if (it == index_.end()) return;
  order_.erase(it->second.at);
  index_.erase(it);
}

void ServerStatements::touch(const std::string& name) {
  if (auto it = index_.find(name); it != index_.end()) order_.splice(order_.begin(), order_, it->second.at);
}

std::uint64_t ServerStatements::shape(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? 0 : it->second.shape;
}

void ServerStatements::set_shape(const std::string& name, std::uint64_t shape) {
  if (auto it = index_.find(name); it != index_.end()) it->second.shape = shape;
}

void ServerStatements::clear() {
  order_.clear();
  index_.clear();
  stale_.clear();
}

std::optional<std::string> ServerStatements::evict_if_full() {
  if (index_.size() < capacity_ || order_.empty()) return std::nullopt;
  std::string victim = std::move(order_.back());
  order_.pop_back();
  index_.erase(victim);
  return victim;
}

}  // namespace pgsluice::server
