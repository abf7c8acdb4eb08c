//! An in-memory snapshot of the supply network, the site tree and who lives where. It answers
//! `affected(supply point)` (all sites and consumers downstream) in milliseconds for a million
//! consumers, with no I/O, so rules can call it synchronously. The hub builds it from storage and
//! swaps in a new one when the model changes.

use std::collections::{HashMap, HashSet};

/// Collects rows in any order; `build` turns them into the index.
#[derive(Default)]
pub struct NetworkBuilder {
    point_links: Vec<(i64, i64)>,
    site_links: Vec<(i64, i64)>,
    sites: Vec<(i64, Option<i64>)>,
    residents: Vec<(i64, i64)>,
    flags: HashMap<i64, (bool, bool)>,
}

impl NetworkBuilder {
    pub fn point_feeds_point(&mut self, from: i64, to: i64) {
        self.point_links.push((from, to));
    }
    pub fn point_feeds_site(&mut self, from: i64, site: i64) {
        self.site_links.push((from, site));
    }
    pub fn site(&mut self, id: i64, parent: Option<i64>) {
        self.sites.push((id, parent));
    }
    pub fn consumer(&mut self, site: i64, consumer: i64, life_support: bool, social_object: bool) {
        self.residents.push((site, consumer));
        self.flags.insert(consumer, (life_support, social_object));
    }

    pub fn build(self) -> NetworkIndex {
        let mut points: HashMap<i64, Vec<i64>> = HashMap::new();
        let mut feeds: HashMap<i64, Vec<i64>> = HashMap::new();
        for (from, to) in self.point_links {
            points.entry(from).or_default().push(to);
        }
        for (from, site) in self.site_links {
            feeds.entry(from).or_default().push(site);
        }

        let mut site_ids: Vec<i64> = self.sites.iter().map(|s| s.0).collect();
        site_ids.sort_unstable();
        site_ids.dedup();
        let site_index = |id: i64, ids: &[i64]| ids.binary_search(&id).ok();
        let mut child_pairs: Vec<(u32, u32)> = self
            .sites
            .iter()
            .filter_map(|(id, parent)| {
                let p = site_index((*parent)?, &site_ids)?;
                let c = site_index(*id, &site_ids)?;
                Some((p as u32, c as u32))
            })
            .collect();
        child_pairs.sort_unstable();
        let mut parents = vec![u32::MAX; site_ids.len()];
        for (p, c) in &child_pairs {
            parents[*c as usize] = *p;
        }
        let children = Csr::new(site_ids.len(), &child_pairs);

        let mut consumer_ids: Vec<i64> = self.residents.iter().map(|r| r.1).collect();
        consumer_ids.sort_unstable();
        consumer_ids.dedup();
        let mut resident_pairs: Vec<(u32, u32)> = self
            .residents
            .iter()
            .filter_map(|(site, consumer)| {
                let s = site_index(*site, &site_ids)?;
                let c = consumer_ids.binary_search(consumer).ok()?;
                Some((s as u32, c as u32))
            })
            .collect();
        resident_pairs.sort_unstable();
        let residents = Csr::new(site_ids.len(), &resident_pairs);
        let flags = consumer_ids
            .iter()
            .map(|c| self.flags.get(c).copied().unwrap_or_default())
            .collect();

        NetworkIndex {
            points,
            feeds,
            site_ids,
            parents,
            children,
            consumer_ids,
            residents,
            flags,
        }
    }
}

/// Compressed adjacency: the neighbours of node `i` are `targets[offsets[i]..offsets[i + 1]]`.
#[derive(Debug, Default)]
struct Csr {
    offsets: Vec<u32>,
    targets: Vec<u32>,
}

impl Csr {
    /// `pairs` sorted by source.
    fn new(nodes: usize, pairs: &[(u32, u32)]) -> Self {
        let mut offsets = vec![0u32; nodes + 1];
        for (from, _) in pairs {
            offsets[*from as usize + 1] += 1;
        }
        for i in 0..nodes {
            offsets[i + 1] += offsets[i];
        }
        Csr {
            offsets,
            targets: pairs.iter().map(|p| p.1).collect(),
        }
    }

    fn of(&self, node: usize) -> &[u32] {
        match (self.offsets.get(node), self.offsets.get(node + 1)) {
            (Some(a), Some(b)) => &self.targets[*a as usize..*b as usize],
            _ => &[],
        }
    }
}

/// The snapshot. Ids are the database ids.
#[derive(Debug, Default)]
pub struct NetworkIndex {
    points: HashMap<i64, Vec<i64>>,
    feeds: HashMap<i64, Vec<i64>>,
    site_ids: Vec<i64>,
    /// Parent index of each site, `u32::MAX` for a top-level site.
    parents: Vec<u32>,
    children: Csr,
    consumer_ids: Vec<i64>,
    residents: Csr,
    flags: Vec<(bool, bool)>,
}

/// Everything downstream of a supply point (or under a set of sites).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Affected {
    /// The supply point itself and every point it feeds, directly or not.
    pub supply_points: Vec<i64>,
    /// Every site fed, with all their sub-sites, ascending.
    pub sites: Vec<i64>,
    /// The top-level sites (residential complexes, standalone objects) that contain an affected site,
    /// even if only one of their buildings is fed, ascending.
    pub roots: Vec<i64>,
    /// Every consumer linked to one of those sites, once, ascending.
    pub consumers: Vec<i64>,
    /// Those of `consumers` on life support.
    pub life_support: Vec<i64>,
    /// Those of `consumers` that are social objects (hospitals, schools, kindergartens).
    pub social_objects: Vec<i64>,
}

impl NetworkIndex {
    pub fn sites_count(&self) -> usize {
        self.site_ids.len()
    }
    pub fn consumers_count(&self) -> usize {
        self.consumer_ids.len()
    }

    /// The top-level ancestor of site index `i` (depth is bounded to survive a corrupt cycle).
    fn root_of(&self, mut i: usize) -> usize {
        for _ in 0..64 {
            match self.parents.get(i) {
                Some(p) if *p != u32::MAX => i = *p as usize,
                _ => break,
            }
        }
        i
    }

    /// All that a supply point feeds, directly or through other points; cycles in the graph are fine.
    pub fn affected(&self, supply_point: i64) -> Affected {
        let mut seen = HashSet::from([supply_point]);
        let mut queue = vec![supply_point];
        let mut roots = Vec::new();
        while let Some(p) = queue.pop() {
            roots.extend(self.feeds.get(&p).into_iter().flatten().copied());
            for next in self.points.get(&p).into_iter().flatten() {
                if seen.insert(*next) {
                    queue.push(*next);
                }
            }
        }
        let mut supply_points: Vec<i64> = seen.into_iter().collect();
        supply_points.sort_unstable();
        Affected {
            supply_points,
            ..self.affected_sites(&roots)
        }
    }

    /// All sites under `roots` (included) and their consumers.
    pub fn affected_sites(&self, roots: &[i64]) -> Affected {
        let mut site_seen = vec![false; self.site_ids.len()];
        let mut queue: Vec<usize> = Vec::new();
        for r in roots {
            if let Ok(i) = self.site_ids.binary_search(r)
                && !site_seen[i]
            {
                site_seen[i] = true;
                queue.push(i);
            }
        }
        let mut consumer_seen = vec![false; self.consumer_ids.len()];
        while let Some(s) = queue.pop() {
            for c in self.residents.of(s) {
                consumer_seen[*c as usize] = true;
            }
            for child in self.children.of(s) {
                let child = *child as usize;
                if !site_seen[child] {
                    site_seen[child] = true;
                    queue.push(child);
                }
            }
        }
        let sites = site_seen
            .iter()
            .enumerate()
            .filter(|(_, s)| **s)
            .map(|(i, _)| self.site_ids[i])
            .collect();
        let mut root_seen = vec![false; self.site_ids.len()];
        for (i, seen) in site_seen.iter().enumerate() {
            if *seen {
                root_seen[self.root_of(i)] = true;
            }
        }
        let roots = root_seen
            .iter()
            .enumerate()
            .filter(|(_, s)| **s)
            .map(|(i, _)| self.site_ids[i])
            .collect();
        let mut out = Affected {
            sites,
            roots,
            ..Affected::default()
        };
        for (i, seen) in consumer_seen.iter().enumerate() {
            if *seen {
                let id = self.consumer_ids[i];
                out.consumers.push(id);
                let (life, social) = self.flags[i];
                if life {
                    out.life_support.push(id);
                }
                if social {
                    out.social_objects.push(id);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Boiler house 1 feeds heat points 2 and 3 (3 also feeds back to 1: a ring). Point 2 feeds
    /// complex 10 (building 11, apartments 12 and 13); point 3 feeds school 20. Consumer 100 lives in
    /// 12 and 13 (counted once), 101 in 13 on life support, 102 is the school; 103 lives elsewhere.
    fn sample() -> NetworkIndex {
        let mut b = NetworkBuilder::default();
        b.point_feeds_point(1, 2);
        b.point_feeds_point(1, 3);
        b.point_feeds_point(3, 1);
        b.point_feeds_site(2, 10);
        b.point_feeds_site(3, 20);
        for (id, parent) in [
            (10, None),
            (11, Some(10)),
            (12, Some(11)),
            (13, Some(11)),
            (20, None),
            (30, None),
        ] {
            b.site(id, parent);
        }
        b.consumer(12, 100, false, false);
        b.consumer(13, 100, false, false);
        b.consumer(13, 101, true, false);
        b.consumer(20, 102, false, true);
        b.consumer(30, 103, false, false);
        b.build()
    }

    #[test]
    fn resolves_everything_downstream_once() {
        let idx = sample();
        let a = idx.affected(1);
        assert_eq!(a.supply_points, vec![1, 2, 3]);
        assert_eq!(a.sites, vec![10, 11, 12, 13, 20]);
        assert_eq!(a.consumers, vec![100, 101, 102]);
        assert_eq!(a.life_support, vec![101]);
        assert_eq!(a.social_objects, vec![102]);
        let hp = idx.affected(2);
        assert_eq!(hp.consumers, vec![100, 101]);
        assert_eq!(idx.affected(999).consumers, Vec::<i64>::new());
        assert_eq!(idx.affected_sites(&[13]).consumers, vec![100, 101]);
        assert_eq!(a.roots, vec![10, 20]);
        assert_eq!(
            idx.affected_sites(&[13]).roots,
            vec![10],
            "a partly fed complex is affected"
        );
    }
}
