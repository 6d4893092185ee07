//! TLS for NBD over TCP, with a real TLS client (libnbd's nbdinfo and nbdcopy over `nbds://`):
//! reached with the right certificates, refused without them or without TLS, and nothing about
//! the exports revealed before TLS.

use crate::helpers::*;
use crate::nbd_client::*;
use crate::service::{have, run, Service};
use lostwrite::nbd::proto::{opt, rep};
use std::path::Path;
use std::process::Command;

/// A CA, a server certificate for localhost, a client certificate; laid out as libnbd expects
/// (ca-cert.pem, client-cert.pem, client-key.pem).
fn certificates(dir: &Path) {
    let sh = |args: &str| run(Command::new("sh").arg("-c").arg(args).current_dir(dir));
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    sh(&format!("openssl req -x509 {ec} -keyout ca-key.pem -out ca-cert.pem -days 2 -subj /CN=test-ca 2>/dev/null"));
    for (name, ext) in [
        (
            "server",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth",
        ),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!("{ext}\nbasicConstraints=CA:FALSE\n"),
        )
        .unwrap();
        sh(&format!(
            "openssl req {ec} -keyout {name}-key.pem -out {name}.csr -subj /CN={name} 2>/dev/null"
        ));
        sh(&format!(
            "openssl x509 -req -in {name}.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial -out {name}-cert.pem -days 2 -extfile {name}.ext 2>/dev/null"
        ));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_tls_only_export_is_reached_with_the_right_certificates_and_refused_without() {
    if !have("openssl") || !have("nbdinfo") || !have("nbdcopy") {
        return;
    }
    let s = Scratch::new(8 << 20);
    s.init(4096, true);
    let certs = s.dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    certificates(&certs);
    let no_client_cert = s.dir.path().join("ca-only");
    std::fs::create_dir_all(&no_client_cert).unwrap();
    std::fs::copy(
        certs.join("ca-cert.pem"),
        no_client_cert.join("ca-cert.pem"),
    )
    .unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let c = |f: &str| certs.join(f).to_str().unwrap().to_string();
    let svc = Service::start_tcp_with(
        &s.image,
        &addr,
        &s.dir.path().join("tls"),
        &[
            "--export",
            "disk",
            "--tls-cert",
            &c("server-cert.pem"),
            "--tls-key",
            &c("server-key.pem"),
            "--tls-client-ca",
            &c("ca-cert.pem"),
        ],
    );
    let uri = |dir: &Path| {
        format!(
            "nbds://localhost:{port}/disk?tls-certificates={}",
            dir.display()
        )
    };
    // The right certificates: size, and data both ways byte-exact over several connections.
    let out = run(Command::new("nbdinfo").arg("--size").arg(uri(&certs)));
    assert_eq!(out.trim(), (8u64 << 20).to_string());
    let src = s.dir.path().join("src.raw");
    random_image(&src, 8 << 20, 31);
    run(Command::new("nbdcopy")
        .args(["--connections=2", "--flush"])
        .arg(&src)
        .arg(uri(&certs)));
    let back = s.dir.path().join("back.raw");
    run(Command::new("nbdcopy").arg(uri(&certs)).arg(&back));
    assert!(std::fs::read(&back).unwrap() == std::fs::read(&src).unwrap());
    // No TLS, or TLS without a client certificate: refused.
    let o = Command::new("nbdinfo")
        .arg("--size")
        .arg(format!("nbd://localhost:{port}/disk"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("requires TLS"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = Command::new("nbdinfo")
        .arg("--size")
        .arg(uri(&no_client_cert))
        .output()
        .unwrap();
    assert!(!o.status.success(), "reached without a client certificate");
    // Before TLS, nothing: not even the export's name.
    let mut raw = greet_tcp(&addr);
    for o in [opt::LIST, opt::INFO, opt::GO] {
        send_option(&mut raw, o, &go_data("disk", &[]));
        let (_, kind, data) = option_reply(&mut raw);
        assert_eq!(kind, rep::ERR_TLS_REQD, "option {o}");
        assert!(data.is_empty());
    }
    send_option(&mut raw, opt::STARTTLS, b"junk");
    assert_eq!(option_reply(&mut raw).1, rep::ERR_INVALID);
    drop(raw);
    let log = svc.stop();
    assert!(
        log.contains("TLS required, client certificates required"),
        "{log}"
    );
    assert!(log.contains("peer sent no certificates"), "{log}");
    verify_clean(&s.image);
    assert_eq!(
        std::fs::read(&s.image).unwrap(),
        std::fs::read(&src).unwrap()
    );
}

#[test]
fn without_tls_configured_starttls_is_unsupported() {
    let s = Scratch::new(1 << 20);
    s.init(4096, true);
    let svc = Service::start(&s.image, &[]);
    let mut c = greet(&svc.socket);
    send_option(&mut c, opt::STARTTLS, b"");
    assert_eq!(option_reply(&mut c).1, rep::ERR_UNSUP);
    drop(c);
    svc.stop();
}
