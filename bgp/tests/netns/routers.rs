//! The three routers the interop tests run: GoBGP, BIRD 2 and FRR bgpd, each in its own
//! namespace as AS 65002, peering with a Flowgate speaker (AS 65001) on the host.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::{Lab, Link};

/// A routing daemon under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Router {
    Gobgp,
    Bird,
    Frr,
}

/// What a router announces to us.
pub const ROUTER_V4: &str = "198.51.100.0/24";
pub const ROUTER_V6: &str = "2001:db8:100::/48";

impl Router {
    pub fn binaries(self) -> &'static [&'static str] {
        match self {
            Router::Gobgp => &["gobgpd", "gobgp", "ip"],
            Router::Bird => &["bird", "birdc", "ip"],
            Router::Frr => &["/usr/lib/frr/bgpd", "vtysh", "ip"],
        }
    }

    /// Starts the router in `ns`, peering with every speaker link in `links`; the router
    /// waits for the speakers to connect.
    pub fn start(self, lab: &mut Lab, ns: &str, links: &[Link], extra_bird: &str) -> u32 {
        self.start_with(lab, ns, links, extra_bird, None)
    }

    /// Starts the router in `ns`, connecting actively to the speaker on `link` at
    /// `port`: the speaker's peer is passive.
    pub fn start_connecting(self, lab: &mut Lab, ns: &str, link: &Link, port: u16) -> u32 {
        self.start_with(lab, ns, std::slice::from_ref(link), "", Some(port))
    }

    fn start_with(
        self,
        lab: &mut Lab,
        ns: &str,
        links: &[Link],
        extra_bird: &str,
        connect_to: Option<u16>,
    ) -> u32 {
        let me = &links[0];
        let dir = lab.dir.to_str().unwrap().to_owned();
        match self {
            Router::Gobgp => {
                let mut conf = format!(
                    "[global.config]\n  as = 65002\n  router-id = \"{}\"\n  port = 179\n",
                    me.ns_v4
                );
                let transport = match connect_to {
                    None => "passive-mode = true".to_owned(),
                    Some(port) => format!("passive-mode = false\n    remote-port = {port}"),
                };
                for l in links {
                    conf += &format!(
                        "[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{}\"\n    peer-as = 65001\n  \
                         [neighbors.timers.config]\n    hold-time = 9\n    keepalive-interval = 3\n    connect-retry = 1\n  \
                         [neighbors.transport.config]\n    {transport}\n  \
                         [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv4-unicast\"\n  \
                         [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv6-unicast\"\n",
                        l.host_v4
                    );
                }
                let path = lab.write("gobgpd.toml", &conf);
                lab.spawn(
                    ns,
                    "gobgpd.log",
                    &[
                        "gobgpd",
                        "-f",
                        &path,
                        "-t",
                        "toml",
                        "--api-hosts",
                        "127.0.0.1:50051",
                    ],
                )
            }
            Router::Bird => {
                let mut conf = format!(
                    "router id {};\nlog stderr all;\nprotocol device {{}}\n\
                     protocol static s4 {{ ipv4; route {ROUTER_V4} blackhole; }}\n\
                     protocol static s6 {{ ipv6; route {ROUTER_V6} blackhole; }}\n{extra_bird}\n",
                    me.ns_v4
                );
                let (port, connect) = match connect_to {
                    None => (String::new(), "passive on;"),
                    Some(port) => (
                        format!(" port {port}"),
                        "connect delay time 1; connect retry time 2;",
                    ),
                };
                for (i, l) in links.iter().enumerate() {
                    conf += &format!(
                        "protocol bgp fg{i} {{\n  local {} as 65002; neighbor {}{port} as 65001; hold time 9; {connect}\n  \
                         ipv4 {{ import all; export where proto = \"s4\"; }};\n  \
                         ipv6 {{ import all; export where proto = \"s6\"; next hop address {}; }};\n}}\n",
                        l.ns_v4, l.host_v4, l.ns_v6
                    );
                }
                let path = lab.write("bird.conf", &conf);
                let ctl = format!("{dir}/bird.ctl");
                let pid = format!("{dir}/bird.pid");
                lab.spawn(
                    ns,
                    "bird.log",
                    &["bird", "-f", "-c", &path, "-s", &ctl, "-P", &pid],
                )
            }
            Router::Frr => {
                let mut conf = format!(
                    "frr defaults traditional\nhostname r\nrouter bgp 65002\n bgp router-id {}\n \
                     no bgp ebgp-requires-policy\n no bgp network import-check\n",
                    me.ns_v4
                );
                for l in links {
                    conf += &format!(
                        " neighbor {h} remote-as 65001\n neighbor {h} timers 3 9\n",
                        h = l.host_v4
                    );
                    conf += &match connect_to {
                        None => format!(" neighbor {} passive\n", l.host_v4),
                        Some(port) => format!(
                            " neighbor {h} port {port}\n neighbor {h} timers connect 1\n",
                            h = l.host_v4
                        ),
                    };
                }
                conf += &format!(
                    " address-family ipv4 unicast\n  network {ROUTER_V4}\n exit-address-family\n"
                );
                conf += " address-family ipv6 unicast\n";
                for l in links {
                    conf += &format!("  neighbor {} activate\n", l.host_v4);
                }
                conf += &format!("  network {ROUTER_V6}\n exit-address-family\n");
                let path = lab.write("bgpd.conf", &conf);
                let chown = std::process::Command::new("chown")
                    .args(["-R", "frr:frr", &dir])
                    .status();
                assert!(chown.is_ok_and(|s| s.success()), "chown frr {dir}");
                let pid = format!("{dir}/bgpd.pid");
                lab.spawn(
                    ns,
                    "bgpd.log",
                    &[
                        "/usr/lib/frr/bgpd",
                        "-Z",
                        "-f",
                        &path,
                        "-i",
                        &pid,
                        "--vty_socket",
                        &dir,
                        "-u",
                        "frr",
                        "-g",
                        "frr",
                        "-A",
                        "127.0.0.1",
                        "-P",
                        "2605",
                    ],
                )
            }
        }
    }

    /// The router's BGP table for IPv4 (`v6 = false`) or IPv6, as its CLI prints it.
    pub fn rib(self, lab: &Lab, ns: &str, v6: bool) -> String {
        let dir = lab.dir.to_str().unwrap();
        match self {
            Router::Gobgp => lab.exec(
                ns,
                &[
                    "gobgp",
                    "-u",
                    "127.0.0.1",
                    "-p",
                    "50051",
                    "global",
                    "rib",
                    "-a",
                    if v6 { "ipv6" } else { "ipv4" },
                ],
            ),
            Router::Bird => lab.exec(
                ns,
                &["birdc", "-s", &format!("{dir}/bird.ctl"), "show", "route"],
            ),
            Router::Frr => lab.exec(
                ns,
                &[
                    "vtysh",
                    "--vty_socket",
                    dir,
                    "-d",
                    "bgpd",
                    "-c",
                    if v6 {
                        "show bgp ipv6 unicast"
                    } else {
                        "show bgp ipv4 unicast"
                    },
                ],
            ),
        }
    }

    /// Makes the router announce its test routes (GoBGP has no static routes in its file).
    pub fn announce_own(self, lab: &Lab, ns: &str) {
        if self == Router::Gobgp {
            let g = [
                "gobgp",
                "-u",
                "127.0.0.1",
                "-p",
                "50051",
                "global",
                "rib",
                "add",
            ];
            lab.exec(ns, &[&g[..], &[ROUTER_V4, "-a", "ipv4"]].concat());
            lab.exec(ns, &[&g[..], &[ROUTER_V6, "-a", "ipv6"]].concat());
        }
    }
}
