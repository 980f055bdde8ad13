//! Interoperability with the real Docker engine: its `docker save` archives load here, and
//! archives this crate saves load into it with the same image ids.
//!
//! Runs when a daemon answers at `HATCH_TEST_DOCKER_HOST` (e.g. `unix:///tmp/d/docker.sock`)
//! or `/var/run/docker.sock` and the `docker` CLI is on `PATH`; otherwise it prints why it
//! skipped. Nothing else in this crate's tests needs Docker.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{Fixture, Tarball};

const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

fn docker_host() -> Result<String, String> {
    if let Ok(host) = std::env::var("HATCH_TEST_DOCKER_HOST") {
        return Ok(host);
    }
    if !Path::new(DEFAULT_SOCKET).exists() {
        return Err(format!("{DEFAULT_SOCKET} is absent and HATCH_TEST_DOCKER_HOST is unset"));
    }
    Ok(format!("unix://{DEFAULT_SOCKET}"))
}

struct Docker {
    host: String,
}

impl Docker {
    fn connect() -> Result<Self, String> {
        let docker = Self { host: docker_host()? };
        let output = docker
            .try_run(&["version", "--format", "{{.Server.Version}}"], None)
            .map_err(|e| format!("cannot run the docker CLI: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "the daemon at {} does not answer: {}",
                docker.host,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(docker)
    }

    fn try_run(&self, args: &[&str], stdin: Option<&[u8]>) -> std::io::Result<Output> {
        let mut child = Command::new("docker")
            .args(args)
            .env("DOCKER_HOST", &self.host)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            let input = input.to_vec();
            // Write from a thread so a large stdout cannot deadlock against our write.
            let writer = std::thread::spawn(move || pipe.write_all(&input));
            let output = child.wait_with_output()?;
            writer.join().unwrap()?;
            return Ok(output);
        }
        child.wait_with_output()
    }

    /// Run and require success; returns stdout.
    fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
        let output = self.try_run(args, stdin).unwrap();
        assert!(output.status.success(), "docker {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        output.stdout
    }

    fn image_id(&self, reference: &str) -> String {
        let out = self.run(&["image", "inspect", "--format", "{{.Id}}", reference], None);
        String::from_utf8(out).unwrap().trim().to_owned()
    }

    fn remove(&self, references: &[&str]) {
        let mut args = vec!["rmi", "-f"];
        args.extend_from_slice(references);
        let _ = self.try_run(&args, None);
    }
}

fn rootfs_tarball() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").ok();
    let mut tarball = Tarball::new()
        .dir("bin/", 0o755)
        .dir("etc/", 0o755)
        .file("etc/hello", b"hello from hatch\n", 0o644)
        .dir("tmp/", 0o1777);
    if let Some(busybox) = &busybox {
        tarball =
            tarball.file("bin/busybox", busybox, 0o755).symlink("bin/sh", "/bin/busybox").symlink("bin/cat", "busybox");
    }
    tarball.finish()
}

#[test]
fn docker_save_and_load_interoperate() {
    let docker = match Docker::connect() {
        Ok(docker) => docker,
        Err(reason) => {
            eprintln!("skipping docker_save_and_load_interoperate: {reason}");
            return;
        }
    };
    let suffix = std::process::id();
    let from_docker = format!("hatch-image-test/from-docker:{suffix}");
    let from_hatch = format!("hatch-image-test/from-hatch:{suffix}");
    docker.remove(&[&from_docker, &from_hatch]);
    let fixture = Fixture::new();
    let tarball = rootfs_tarball();

    // Docker imports and saves (legacy layout on Docker < 25); hatch loads.
    docker.run(
        &["import", "--change", r#"CMD ["/bin/sh"]"#, "--change", "ENV FOO=bar", "-", &from_docker],
        Some(&tarball),
    );
    let docker_id = docker.image_id(&from_docker);
    let saved_by_docker = docker.run(&["save", &from_docker], None);
    let loaded = fixture.store.load(saved_by_docker.as_slice()).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].image.id, docker_id, "same config bytes, same id");
    assert_eq!(loaded[0].messages(), [format!("Loaded image: {from_docker}")]);
    let image = &loaded[0].image;
    assert_eq!(image.run_config().cmd(), ["/bin/sh"]);
    assert!(image.run_config().env().contains(&"FOO=bar".to_owned()));
    assert_eq!(std::fs::read(image.rootfs.join("etc/hello")).unwrap(), b"hello from hatch\n");

    // hatch imports and saves; Docker loads and gets the same id.
    let ours =
        fixture.store.import_tar(tarball.as_slice(), Some(&from_hatch), &["CMD [\"/bin/sh\"]".to_owned()]).unwrap();
    let saved_by_hatch = fixture.store.save(&[&from_hatch], Vec::new()).unwrap();
    let output = docker.run(&["load"], Some(&saved_by_hatch));
    let output = String::from_utf8_lossy(&output);
    assert!(output.contains(&format!("Loaded image: {from_hatch}")), "docker load said: {output}");
    assert_eq!(docker.image_id(&from_hatch), ours.id);

    // And the content is right: read a file through a container's filesystem.
    if Path::new("/bin/busybox").exists() {
        let run =
            docker.try_run(&["run", "--rm", "--network", "none", &from_hatch, "/bin/cat", "/etc/hello"], None).unwrap();
        if run.status.success() {
            assert_eq!(run.stdout, b"hello from hatch\n");
        } else {
            eprintln!(
                "not checking docker run (the daemon cannot run containers here): {}",
                String::from_utf8_lossy(&run.stderr).trim()
            );
        }
    }

    // A round trip of Docker's own archive through hatch keeps the id too.
    docker.remove(&[&from_docker]);
    let resaved = fixture.store.save(&[&from_docker], Vec::new()).unwrap();
    docker.run(&["load"], Some(&resaved));
    assert_eq!(docker.image_id(&from_docker), docker_id);

    docker_build_whiteouts(&docker, &fixture, &from_docker, suffix);
    docker.remove(&[&from_docker, &from_hatch]);
}

/// Layers Docker itself wrote with whiteouts (`.wh.a`, `.wh..wh..opq`) flatten correctly,
/// and the three-layer image goes back into Docker with its id.
fn docker_build_whiteouts(docker: &Docker, fixture: &Fixture, base: &str, suffix: u32) {
    if !Path::new("/bin/busybox").exists() {
        eprintln!("not checking docker build whiteouts: /bin/busybox is absent");
        return;
    }
    let built = format!("hatch-image-test/built:{suffix}");
    let dockerfile = format!(
        "FROM {base}\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox mkdir -p /data/sub && echo x > /data/sub/x\"]\n\
         RUN [\"/bin/busybox\", \"rm\", \"/etc/hello\"]\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox rm -rf /data && /bin/busybox mkdir /data && echo y > /data/y\"]\n"
    );
    let output = Command::new("docker")
        .args(["build", "-q", "-t", &built, "-"])
        .env("DOCKER_HOST", &docker.host)
        .env("DOCKER_BUILDKIT", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(dockerfile.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    if !output.status.success() {
        eprintln!(
            "not checking docker build whiteouts (the daemon cannot build here): {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        return;
    }
    let built_id = docker.image_id(&built);
    let saved = docker.run(&["save", &built], None);
    let loaded = fixture.store.load(saved.as_slice()).unwrap();
    let image = &loaded[0].image;
    assert_eq!(image.id, built_id);
    assert_eq!(image.diff_ids().len(), 4);
    assert!(!image.rootfs.join("etc/hello").exists(), ".wh.hello applied");
    assert!(!image.rootfs.join("data/sub").exists(), "opaque /data applied");
    assert_eq!(std::fs::read(image.rootfs.join("data/y")).unwrap(), b"y\n");
    assert!(image.rootfs.join("bin/busybox").exists());

    docker.remove(&[&built]);
    let resaved = fixture.store.save(&[&built], Vec::new()).unwrap();
    docker.run(&["load"], Some(&resaved));
    assert_eq!(docker.image_id(&built), built_id);
    docker.remove(&[&built]);
}
