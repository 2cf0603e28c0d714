//! The leader cache: which node leads a group, by name, and in which term.
//!
//! Shared by a node's `Fleet` handles (which route requests with it) and its node loop (which
//! learns from its own replicas' leadership changes). An entry is replaced only by news that is
//! not older: a hint from a node that knows an older term never overwrites a newer leader.

use dashmap::DashMap;
use fleet_core::Term;

/// A group's leader as last learned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CachedLeader {
    /// The node's name.
    pub node: String,
    /// The term in which it was known to lead (0: a guess, such as a desired leader).
    pub term: Term,
}

/// Group name to its leader.
pub(crate) type LeaderCache = DashMap<String, CachedLeader>;

/// `node` leads `group` in `term`: kept unless the cache knows a newer term.
pub(crate) fn learn(cache: &LeaderCache, group: &str, node: &str, term: Term) {
    match cache.get_mut(group) {
        Some(mut e) => {
            if term >= e.term && (e.node != node || e.term != term) {
                *e = CachedLeader {
                    node: node.to_string(),
                    term,
                };
            }
        }
        None => {
            cache.insert(
                group.to_string(),
                CachedLeader {
                    node: node.to_string(),
                    term,
                },
            );
        }
    }
}

/// `group` has no known leader as of `term`: forgets an entry that is not newer.
pub(crate) fn forget(cache: &LeaderCache, group: &str, term: Term) {
    cache.remove_if(group, |_, e| e.term <= term);
}

/// `node` did not answer for `group`: forgets the entry if it still names that node.
pub(crate) fn forget_node(cache: &LeaderCache, group: &str, node: &str) {
    cache.remove_if(group, |_, e| e.node == node);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_news_never_replaces_newer() {
        let cache = LeaderCache::new();
        learn(&cache, "g", "n1", 5);
        learn(&cache, "g", "n2", 4);
        assert_eq!(cache.get("g").unwrap().node, "n1");
        learn(&cache, "g", "n2", 6);
        assert_eq!(cache.get("g").unwrap().node, "n2");
        forget(&cache, "g", 5);
        assert!(
            cache.get("g").is_some(),
            "a loss of leader in an older term is ignored"
        );
        forget(&cache, "g", 6);
        assert!(cache.get("g").is_none());
    }

    #[test]
    fn an_unanswering_node_is_forgotten_only_if_still_cached() {
        let cache = LeaderCache::new();
        learn(&cache, "g", "n1", 2);
        forget_node(&cache, "g", "n2");
        assert!(cache.get("g").is_some());
        forget_node(&cache, "g", "n1");
        assert!(cache.get("g").is_none());
    }
}
