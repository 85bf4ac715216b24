//! Scale: BIRD announces 100,000 static IPv4 prefixes to Flowgate and to GoBGP at the same
//! time; the test reports how long each takes to hold the full table.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod netns;

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use flowgate_bgp::speaker::{PeerConfig, Speaker, SpeakerConfig};
use netns::Lab;

const PREFIXES: u32 = 100_000;
const LIMIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bird_full_table_to_flowgate_and_gobgp() {
    let Some(mut lab) = Lab::new(
        "bird_full_table_to_flowgate_and_gobgp",
        &["bird", "birdc", "gobgpd", "gobgp", "ip"],
    ) else {
        return;
    };
    let bird_ns = lab.netns();
    let gobgp_ns = lab.netns();
    let link = lab.link_host(&bird_ns);
    let (bird_ip, gobgp_ip) = lab.link_between(&bird_ns, &gobgp_ns);

    let mut conf = format!(
        "router id {};\nlog stderr {{ warning, error, fatal }};\nprotocol device {{}}\nprotocol static big {{\n  ipv4;\n",
        link.ns_v4
    );
    for i in 0..PREFIXES {
        let base = 0x1400_0000u32 + (i << 8); // 20.0.0.0/24 onwards
        let _ = writeln!(
            conf,
            "  route {}/24 blackhole;",
            std::net::Ipv4Addr::from(base)
        );
    }
    conf += "}\n";
    conf += &format!(
        "protocol bgp fg {{ local {} as 65002; neighbor {} as 65001; hold time 90; passive on; \
         ipv4 {{ import none; export where proto = \"big\"; }}; }}\n",
        link.ns_v4, link.host_v4
    );
    conf += &format!(
        "protocol bgp gobgp {{ local {bird_ip} as 65002; neighbor {gobgp_ip} as 65003; hold time 90; passive on; \
         ipv4 {{ import none; export where proto = \"big\"; }}; }}\n"
    );
    let path = lab.write("bird.conf", &conf);
    let dir = lab.dir.to_str().unwrap().to_owned();
    lab.spawn(
        &bird_ns,
        "bird.log",
        &[
            "bird",
            "-f",
            "-c",
            &path,
            "-s",
            &format!("{dir}/bird.ctl"),
            "-P",
            &format!("{dir}/bird.pid"),
        ],
    );
    // Wait until BIRD has loaded its static table, so both clocks measure BGP only.
    let ready = Instant::now();
    loop {
        let out = lab.exec(
            &bird_ns,
            &[
                "birdc",
                "-s",
                &format!("{dir}/bird.ctl"),
                "show",
                "route",
                "count",
            ],
        );
        if out.contains(&format!("{PREFIXES} of {PREFIXES} routes")) {
            break;
        }
        assert!(
            ready.elapsed() < LIMIT,
            "BIRD did not load its table: {out}\n{}",
            lab.log("bird.log")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let gobgp_conf = format!(
        "[global.config]\n  as = 65003\n  router-id = \"{gobgp_ip}\"\n  port = 179\n\
         [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{bird_ip}\"\n    peer-as = 65002\n  \
         [neighbors.timers.config]\n    connect-retry = 1\n"
    );
    let gpath = lab.write("gobgpd.toml", &gobgp_conf);
    let t0 = Instant::now();
    lab.spawn(
        &gobgp_ns,
        "gobgpd.log",
        &[
            "gobgpd",
            "-f",
            &gpath,
            "-t",
            "toml",
            "--api-hosts",
            "127.0.0.1:50051",
        ],
    );
    let speaker = Speaker::start(SpeakerConfig::new(65001, link.host_v4))
        .await
        .unwrap();
    let mut pc = PeerConfig::new(IpAddr::V4(link.ns_v4), 65002);
    pc.local_address = Some(IpAddr::V4(link.host_v4));
    pc.connect_retry = Duration::from_millis(500);
    speaker.add_peer(pc).unwrap();

    let peer = IpAddr::V4(link.ns_v4);
    let mut ours: Option<Duration> = None;
    let mut theirs: Option<Duration> = None;
    let mut ours_up: Option<Duration> = None;
    let mut theirs_up: Option<Duration> = None;
    let mut last_gobgp = Instant::now() - Duration::from_secs(1);
    while (ours.is_none() || theirs.is_none()) && t0.elapsed() < LIMIT {
        if let Some(at) = speaker
            .peer(peer)
            .unwrap()
            .established_at
            .filter(|_| ours_up.is_none())
        {
            ours_up = Some(at.into_std().saturating_duration_since(t0));
        }
        if theirs_up.is_none() {
            let out = lab.exec(
                &gobgp_ns,
                &["gobgp", "-u", "127.0.0.1", "-p", "50051", "neighbor"],
            );
            if out.contains("Establ") {
                theirs_up = Some(t0.elapsed());
            }
        }
        if ours.is_none() && speaker.peer(peer).unwrap().received_prefixes == PREFIXES as usize {
            ours = Some(t0.elapsed());
        }
        if theirs.is_none() && last_gobgp.elapsed() > Duration::from_millis(250) {
            last_gobgp = Instant::now();
            let out = lab.exec(
                &gobgp_ns,
                &[
                    "gobgp",
                    "-u",
                    "127.0.0.1",
                    "-p",
                    "50051",
                    "global",
                    "rib",
                    "summary",
                    "-a",
                    "ipv4",
                ],
            );
            if out.contains(&format!("Destination: {PREFIXES},")) {
                theirs = Some(t0.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let build = if cfg!(debug_assertions) {
        "debug build"
    } else {
        "release build"
    };
    let since = |done: Option<Duration>, up: Option<Duration>| {
        done.zip(up).map(|(d, u)| d.saturating_sub(u))
    };
    println!(
        "SCALE {PREFIXES} prefixes from BIRD, after Established: flowgate-bgp ({build}) {:?}, GoBGP {:?}; \
         from process start: flowgate {ours:?}, GoBGP {theirs:?}",
        since(ours, ours_up),
        since(theirs, theirs_up)
    );
    assert!(
        ours.is_some(),
        "flowgate holds {} prefixes after {LIMIT:?}",
        speaker.peer(peer).unwrap().received_prefixes
    );
    assert!(
        theirs.is_some(),
        "GoBGP did not reach {PREFIXES} prefixes: {}",
        lab.log("gobgpd.log")
    );
    assert_eq!(speaker.adj_rib_in(peer).len(), PREFIXES as usize);
    speaker.shutdown().await;
}
