#ifndef WSYNC_DAEMON_CORE_RECENT_H_
#define WSYNC_DAEMON_CORE_RECENT_H_

#include <cstddef>
#include <deque>
#include <map>
#include <string>

namespace wsync::core {

// The last `capacity` entries put, by key; putting one more forgets the
// oldest put, whatever the keys' order. Not thread-safe.
template <typename V>
class RecentMap {
 public:
  explicit RecentMap(size_t capacity) : capacity_(capacity < 1 ? 1 : capacity) {}

  // Stores `value` under `key`; a key already present keeps its age.
  void Put(const std::string& key, V value) {
    auto [it, fresh] = map_.insert_or_assign(key, std::move(value));
    if (!fresh) return;
    order_.push_back(key);
    while (order_.size() > capacity_) {
      map_.erase(order_.front());
      order_.pop_front();
    }
  }
  // The value under `key`, or null when it was never put or was forgotten.
  const V* Find(const std::string& key) const {
    auto it = map_.find(key);
    return it == map_.end() ? nullptr : &it->second;
  }
  bool Contains(const std::string& key) const { return map_.count(key) > 0; }
  size_t size() const { return map_.size(); }

 private:
  const size_t capacity_;
  std::map<std::string, V> map_;
  std::deque<std::string> order_;
};

}  // namespace wsync::core

#endif  // WSYNC_DAEMON_CORE_RECENT_H_
