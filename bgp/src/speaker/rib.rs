//! Adj-RIB-in (what a peer sent us) and adj-RIB-out (what we sent a peer), and the export
//! policy that turns our announcements into the attributes one peer receives.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use bytes::BytesMut;

use super::config::RouteAttributes;
use crate::packet::attribute::encode_attributes;
use crate::packet::{
    AsPath, Family, HEADER_LEN, MpReach, MpUnreach, Options, PathAttributes, Prefix, Update,
};

/// Routes received from one peer.
#[derive(Debug, Default)]
pub(crate) struct AdjRibIn {
    pub routes: HashMap<Prefix, Arc<PathAttributes>>,
}

impl AdjRibIn {
    /// Applies an UPDATE; returns (announced, withdrawn) prefixes.
    pub fn apply(&mut self, u: &Update, ebgp: bool) -> (Vec<Prefix>, Vec<Prefix>) {
        let mut withdrawn = u.withdrawn.clone();
        if let Some(un) = &u.attributes.mp_unreach {
            withdrawn.extend_from_slice(&un.withdrawn);
        }
        for p in &withdrawn {
            self.routes.remove(p);
        }
        let mut announced = u.nlri.clone();
        if let Some(r) = &u.attributes.mp_reach {
            announced.extend_from_slice(&r.nlri);
        }
        if !announced.is_empty() {
            let mut stored = u.attributes.clone();
            stored.mp_unreach = None;
            if let Some(r) = stored.mp_reach.as_mut() {
                r.nlri = Vec::new(); // keep the next hop, not the prefix list
            }
            if ebgp {
                stored.local_pref = None; // RFC 4271 §5.1.5: not meaningful from eBGP
            }
            let stored = Arc::new(stored);
            for p in &announced {
                self.routes.insert(*p, stored.clone());
            }
        }
        (announced, withdrawn)
    }
}

/// How routes are exported to one established peer.
#[derive(Debug, Clone)]
pub(crate) struct Export {
    pub local_as: u32,
    pub ebgp: bool,
    pub next_hop_self: bool,
    pub next_hop_v4: Ipv4Addr,
    pub next_hop_v6: Ipv6Addr,
    pub families: Vec<Family>,
    pub options: Options,
}

impl Export {
    /// The attributes `route` carries to this peer (without NLRI).
    pub fn attributes(&self, prefix: &Prefix, route: &RouteAttributes) -> PathAttributes {
        let path = AsPath::sequence(route.as_path.iter().copied());
        let own = route.next_hop.filter(|_| !self.next_hop_self);
        let mut a = PathAttributes {
            origin: Some(route.origin),
            as_path: Some(if self.ebgp {
                path.prepended(self.local_as)
            } else {
                path
            }),
            med: route.med,
            local_pref: if self.ebgp {
                None
            } else {
                Some(route.local_pref.unwrap_or(100))
            },
            communities: route.communities.clone(),
            large_communities: route.large_communities.clone(),
            ..Default::default()
        };
        match prefix.family() {
            Family::Ipv4Unicast => {
                a.next_hop = Some(match own {
                    Some(IpAddr::V4(nh)) => nh,
                    _ => self.next_hop_v4,
                });
            }
            Family::Ipv6Unicast => {
                let nh = match own {
                    Some(IpAddr::V6(nh)) => nh,
                    _ => self.next_hop_v6,
                };
                a.mp_reach = Some(MpReach {
                    family: Family::Ipv6Unicast,
                    next_hop: IpAddr::V6(nh),
                    link_local: None,
                    nlri: Vec::new(),
                });
            }
        }
        a
    }
}

/// Routes sent to one peer, with the attributes they were sent with.
#[derive(Debug, Default)]
pub(crate) struct AdjRibOut {
    pub routes: HashMap<Prefix, Arc<PathAttributes>>,
}

impl AdjRibOut {
    /// Brings the peer up to date with `local`; returns the UPDATEs to send.
    pub fn sync(
        &mut self,
        local: &BTreeMap<Prefix, RouteAttributes>,
        export: &Export,
    ) -> Vec<Update> {
        // Group new or changed routes by their attributes so they share UPDATEs.
        let mut groups: Vec<(Arc<PathAttributes>, Vec<Prefix>)> = Vec::new();
        let mut index: HashMap<Arc<PathAttributes>, usize> = HashMap::new();
        for (prefix, route) in local {
            if !export.families.contains(&prefix.family()) {
                continue;
            }
            let attrs = export.attributes(prefix, route);
            if self.routes.get(prefix).is_some_and(|sent| **sent == attrs) {
                continue;
            }
            let attrs = Arc::new(attrs);
            let i = *index.entry(attrs.clone()).or_insert_with(|| {
                groups.push((attrs.clone(), Vec::new()));
                groups.len() - 1
            });
            groups[i].1.push(*prefix);
            self.routes.insert(*prefix, attrs);
        }
        let gone: Vec<Prefix> = self
            .routes
            .keys()
            .filter(|p| !local.contains_key(p))
            .copied()
            .collect();
        for p in &gone {
            self.routes.remove(p);
        }
        let mut out = Vec::new();
        for family in [Family::Ipv4Unicast, Family::Ipv6Unicast] {
            let w: Vec<Prefix> = gone
                .iter()
                .filter(|p| p.family() == family)
                .copied()
                .collect();
            out.extend(pack_withdrawals(family, &w, export.options));
        }
        for (attrs, prefixes) in groups {
            out.extend(pack_announcements(&attrs, &prefixes, export.options));
        }
        out
    }
}

/// Room for NLRI in one message after `used` bytes, in prefixes of the widest size.
fn per_message(options: Options, used: usize, family: Family) -> usize {
    let width = if family == Family::Ipv4Unicast { 5 } else { 17 };
    (options
        .max_message_len()
        .saturating_sub(HEADER_LEN + 4 + used + 8)
        / width)
        .max(1)
}

fn pack_withdrawals(family: Family, prefixes: &[Prefix], options: Options) -> Vec<Update> {
    prefixes
        .chunks(per_message(options, 0, family))
        .map(|chunk| match family {
            Family::Ipv4Unicast => Update {
                withdrawn: chunk.to_vec(),
                ..Default::default()
            },
            Family::Ipv6Unicast => Update {
                attributes: PathAttributes {
                    mp_unreach: Some(MpUnreach {
                        family,
                        withdrawn: chunk.to_vec(),
                    }),
                    ..Default::default()
                },
                ..Default::default()
            },
        })
        .collect()
}

fn pack_announcements(
    attrs: &PathAttributes,
    prefixes: &[Prefix],
    options: Options,
) -> Vec<Update> {
    let mut size = BytesMut::new();
    let used = match encode_attributes(attrs, options.four_octet_as, &mut size) {
        Ok(()) => size.len(),
        Err(_) => return Vec::new(),
    };
    let family = prefixes
        .first()
        .map(Prefix::family)
        .unwrap_or(Family::Ipv4Unicast);
    prefixes
        .chunks(per_message(options, used, family))
        .map(|chunk| {
            let mut attributes = attrs.clone();
            match attributes.mp_reach.as_mut() {
                Some(r) => {
                    r.nlri = chunk.to_vec();
                    Update {
                        attributes,
                        ..Default::default()
                    }
                }
                None => Update {
                    attributes,
                    nlri: chunk.to_vec(),
                    ..Default::default()
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{Codec, Message};

    fn export() -> Export {
        Export {
            local_as: 65001,
            ebgp: true,
            next_hop_self: true,
            next_hop_v4: Ipv4Addr::new(10, 0, 0, 1),
            next_hop_v6: "fd00::1".parse().unwrap(),
            families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
            options: Options::default(),
        }
    }

    #[test]
    fn sync_sends_only_differences_and_packs_within_the_size_limit() {
        let mut local = BTreeMap::new();
        for i in 0..3000u32 {
            local.insert(
                Prefix::host(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))),
                RouteAttributes::default(),
            );
        }
        local.insert(
            "2001:db8::1/128".parse().unwrap(),
            RouteAttributes::default(),
        );
        let mut out = AdjRibOut::default();
        let updates = out.sync(&local, &export());
        let codec = Codec::new();
        let mut n = 0;
        for u in &updates {
            let mut b = BytesMut::new();
            codec.encode(&Message::Update(u.clone()), &mut b).unwrap();
            n += u.nlri.len() + u.attributes.mp_reach.as_ref().map_or(0, |r| r.nlri.len());
            assert_eq!(u.attributes.as_path.as_ref().unwrap().first(), Some(65001));
        }
        assert_eq!(n, 3001);
        assert!(
            updates.len() >= 4,
            "3000 host routes need several 4096-byte UPDATEs"
        );
        assert!(out.sync(&local, &export()).is_empty(), "nothing changed");

        local.remove(&"2001:db8::1/128".parse().unwrap());
        let w = out.sync(&local, &export());
        assert_eq!(w.len(), 1);
        assert_eq!(
            w[0].attributes.mp_unreach.as_ref().unwrap().withdrawn.len(),
            1
        );
    }

    #[test]
    fn adj_rib_in_applies_announcements_and_withdrawals() {
        let mut rib = AdjRibIn::default();
        let p: Prefix = "192.0.2.0/24".parse().unwrap();
        let mut u = Update {
            nlri: vec![p],
            ..Default::default()
        };
        u.attributes.local_pref = Some(5);
        assert_eq!(rib.apply(&u, true), (vec![p], vec![]));
        assert_eq!(rib.routes[&p].local_pref, None);
        assert_eq!(
            rib.apply(
                &Update {
                    withdrawn: vec![p],
                    ..Default::default()
                },
                true
            ),
            (vec![], vec![p])
        );
        assert!(rib.routes.is_empty());
    }
}
