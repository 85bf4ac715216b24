//! An MQTT gateway for edge brokers, built with the Rust API.
//!
//! Shows: `MqttProxy` spreading clients over two brokers by client id (Maglev, so a
//! client's session always lives on the same broker), user names and passwords, a topic
//! ACL that keeps each device in its own subtree, a per-client publish rate, and a tenant
//! prefix that keeps tenants apart on shared brokers.
//!
//! Run two brokers and the gateway:
//!
//! ```text
//! mosquitto -p 1883 & mosquitto -p 1884 &
//! cargo run --example mqtt_gateway             # gateway on 127.0.0.1:8883
//! ```
//!
//! Use it (users `alice` and `bob`, password `secret`):
//!
//! ```text
//! mosquitto_sub -p 8883 -u alice -P secret -i dev1 -t 'devices/dev1/#' -v &
//! mosquitto_pub -p 8883 -u alice -P secret -i dev1 -t devices/dev1/temp -m 21.5
//!   # -> devices/dev1/temp 21.5   (on the broker: tenants/alice/devices/dev1/temp)
//! mosquitto_pub -p 8883 -u alice -P secret -i dev1 -t devices/dev2/temp -m 1
//!   # -> the gateway closes the connection: dev1 may not publish under dev2
//! mosquitto_pub -p 8883 -u alice -P wrong -t x -m 1
//!   # -> Connection Refused: bad user name or password.
//! ```
#![allow(clippy::print_stdout)]

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;

use flowgate::filters::mqtt::acl::{Access, Action, Rule};
use flowgate::filters::mqtt::{AclConfig, MqttProxy, MqttProxyConfig};
use flowgate::pipeline::Pipeline;
use flowgate::pipeline::server::{ListenerConfig, Protocol, Server};

/// The gateway's configuration for `brokers`.
fn gateway(brokers: &[SocketAddr]) -> MqttProxyConfig {
    let mut cfg = MqttProxyConfig::new(brokers.iter().map(|b| b.to_string()));
    // Two tenants; passwords are stored as `sha256:…` or `pbkdf2-sha256:…` in real use.
    cfg.auth.users.insert("alice".into(), "plain:secret".into());
    cfg.auth.users.insert("bob".into(), "plain:secret".into());
    // Each device publishes and subscribes under devices/<its client id>/ only.
    cfg.acl = Some(AclConfig {
        default: Action::Deny,
        rules: vec![Rule {
            action: Action::Allow,
            access: Access::Both,
            topic: "devices/%c/#".into(),
            client_id: None,
            username: None,
        }],
        ..AclConfig::default()
    });
    cfg.limits.publish_rate = Some(100.0);
    // Tenants share the brokers; the prefix keeps their topics apart.
    cfg.prefix = Some("tenants/%u/".into());
    cfg
}

/// Starts the gateway on `listen`; returns the server and the bound address.
fn start(
    listen: SocketAddr,
    brokers: &[SocketAddr],
) -> Result<(Server, SocketAddr), Box<dyn Error>> {
    let proxy = MqttProxy::new(gateway(brokers))?;
    let pipeline = Pipeline::builder("mqtt-gateway").filter(proxy).build()?;
    let server = Server::builder().workers(1).start()?;
    server.apply(vec![(ListenerConfig::tcp(listen), Arc::new(pipeline))])?;
    let bound = server
        .local_addr(listen, Protocol::Tcp)
        .ok_or("gateway not bound")?;
    Ok((server, bound))
}

fn main() -> Result<(), Box<dyn Error>> {
    let brokers = ["127.0.0.1:1883".parse()?, "127.0.0.1:1884".parse()?];
    let (_server, addr) = start("127.0.0.1:8883".parse()?, &brokers)?;
    println!("mqtt gateway on {addr}, brokers 127.0.0.1:1883 and :1884 (Ctrl-C to stop)");
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    /// Writes an MQTT 3.1.1 packet: type byte, remaining length, body.
    fn packet(first: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        let mut n = body.len();
        loop {
            let mut b = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                b |= 0x80;
            }
            out.push(b);
            if n == 0 {
                break;
            }
        }
        out.extend_from_slice(body);
        out
    }

    fn s(x: &str) -> Vec<u8> {
        let mut v = (x.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(x.as_bytes());
        v
    }

    fn read_packet(c: &mut TcpStream) -> (u8, Vec<u8>) {
        let mut h = [0u8; 2];
        c.read_exact(&mut h).unwrap();
        assert!(h[1] < 0x80, "small packets only in this test");
        let mut body = vec![0u8; usize::from(h[1])];
        c.read_exact(&mut body).unwrap();
        (h[0], body)
    }

    #[test]
    fn smoke_device_publishes_in_its_tenant_and_subtree() {
        if Command::new("mosquitto").arg("-h").output().is_err() {
            eprintln!("skipped: mosquitto is not installed");
            return;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = std::env::temp_dir().join(format!("fg-mqtt-gw-{}.conf", std::process::id()));
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let mut broker = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let baddr: SocketAddr = ([127, 0, 0, 1], port).into();
        for _ in 0..250 {
            if TcpStream::connect(baddr).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let (server, addr) = start("127.0.0.1:0".parse().unwrap(), &[baddr]).unwrap();
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // CONNECT dev1 as alice/secret.
        let mut body = s("MQTT");
        body.extend([4, 0xC2, 0, 60]);
        body.extend(s("dev1"));
        body.extend(s("alice"));
        body.extend(s("secret"));
        c.write_all(&packet(0x10, &body)).unwrap();
        assert_eq!(read_packet(&mut c), (0x20, vec![0, 0]));
        // SUBSCRIBE devices/dev1/# (allowed), then PUBLISH to it and get it back.
        let mut sub = vec![0, 1];
        sub.extend(s("devices/dev1/#"));
        sub.push(0);
        c.write_all(&packet(0x82, &sub)).unwrap();
        assert_eq!(read_packet(&mut c), (0x90, vec![0, 1, 0]));
        let mut publ = s("devices/dev1/temp");
        publ.extend(b"21.5");
        c.write_all(&packet(0x30, &publ)).unwrap();
        let (ty, body) = read_packet(&mut c);
        assert_eq!(
            (ty, body),
            (0x30, publ),
            "the topic comes back without the prefix"
        );
        // Another device's subtree: the gateway closes the connection.
        let mut other = s("devices/dev2/temp");
        other.extend(b"1");
        c.write_all(&packet(0x30, &other)).unwrap();
        let mut rest = Vec::new();
        assert_eq!(c.read_to_end(&mut rest).unwrap_or(0), 0);
        drop(server);
        let _ = broker.kill();
        let _ = broker.wait();
        let _ = std::fs::remove_file(conf);
    }
}
