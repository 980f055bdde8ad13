//! The OCI bundle runc starts: `config.json` next to a `rootfs/` directory.
//!
//! PID 1 is always `hatch-init`, bind-mounted read-only from the host (as Docker mounts
//! `/sbin/docker-init`), so no process in the container can overwrite it through /proc/1/exe. It
//! gets the widest capability set any process in the container may have (for `--privileged`
//! execs) and drops it per process; the control socket and the exit-status file are inherited
//! descriptors 3 and 4.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, Mount, MountBuilder, ProcessBuilder, RootBuilder,
    Spec, UserBuilder,
};

/// Where init appears inside the container.
pub const INIT_PATH_IN_CONTAINER: &str = "/sbin/hatch-init";
/// Descriptor numbers init inherits (runc `--preserve-fds 2` maps them after stdio).
pub const CONTROL_FD: i32 = 3;
pub const STATUS_FD: i32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("build container config: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
    #[error("write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("encode container config: {0}")]
    Encode(#[from] serde_json::Error),
}

/// What varies between containers.
#[derive(Debug, Clone)]
pub struct BundleConfig {
    pub hostname: String,
    /// The host path of the static `hatch-init` binary.
    pub init_binary: PathBuf,
    /// Widest capability set of any process in the container (bit N = capability N).
    pub capabilities: u64,
    /// Privileged containers see all of /proc and /sys and may use every device.
    pub privileged: bool,
    /// Extra read-only files bound into the container, e.g. /etc/hostname: (host path, container path).
    pub files: Vec<(PathBuf, String)>,
    /// `cgroupsPath` for runc.
    pub cgroups_path: String,
}

fn capability_set(mask: u64) -> Capabilities {
    (0..64u32)
        .filter(|bit| mask & (1u64 << bit) != 0)
        .filter_map(|bit| hatch_init::proto::CAPABILITY_NAMES.get(bit as usize))
        .filter_map(|name| serde_json::from_value::<Capability>(serde_json::Value::String(format!("CAP_{name}"))).ok())
        .collect()
}

fn bind_mount(source: &Path, destination: &str) -> Result<Mount, BundleError> {
    Ok(MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(vec!["bind".to_string(), "ro".to_string(), "nosuid".to_string(), "nodev".to_string()])
        .build()?)
}

/// Builds the runtime spec for a container whose root filesystem is `<bundle>/rootfs`.
pub fn spec(config: &BundleConfig) -> Result<Spec, BundleError> {
    let caps = capability_set(config.capabilities);
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build()?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(0u32).gid(0u32).build()?)
        .args(vec![
            INIT_PATH_IN_CONTAINER.to_string(),
            "--control-fd".to_string(),
            CONTROL_FD.to_string(),
            "--status-fd".to_string(),
            STATUS_FD.to_string(),
        ])
        .env(vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()])
        .cwd("/")
        .capabilities(capabilities)
        .no_new_privileges(false)
        .build()?;

    let mut mounts = oci_spec::runtime::get_default_mounts();
    mounts.push(bind_mount(&config.init_binary, INIT_PATH_IN_CONTAINER)?);
    for (host, inside) in &config.files {
        mounts.push(bind_mount(host, inside)?);
    }

    let mut linux = LinuxBuilder::default().cgroups_path(PathBuf::from(&config.cgroups_path));
    if config.privileged {
        linux = linux.masked_paths(Vec::<String>::new()).readonly_paths(Vec::<String>::new());
    } else {
        let defaults = oci_spec::runtime::Linux::default();
        linux = linux
            .masked_paths(defaults.masked_paths().clone().unwrap_or_default())
            .readonly_paths(defaults.readonly_paths().clone().unwrap_or_default());
    }
    let linux = linux.namespaces(oci_spec::runtime::get_default_namespaces()).build()?;

    let mut spec = Spec::default();
    spec.set_hostname(Some(config.hostname.clone()))
        .set_process(Some(process))
        .set_root(Some(RootBuilder::default().path("rootfs").readonly(false).build()?))
        .set_mounts(Some(mounts))
        .set_linux(Some(linux));
    Ok(spec)
}

/// Writes `config.json` into `bundle`.
pub fn write(bundle: &Path, config: &BundleConfig) -> Result<(), BundleError> {
    let path = bundle.join("config.json");
    let json = serde_json::to_vec_pretty(&spec(config)?)?;
    std::fs::write(&path, json).map_err(|source| BundleError::Write { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_pid1_with_inherited_descriptors_and_read_only() -> Result<(), Box<dyn std::error::Error>> {
        let config = BundleConfig {
            hostname: "abc".into(),
            init_binary: "/opt/hatch-init".into(),
            capabilities: hatch_init::proto::default_capabilities(),
            privileged: false,
            files: vec![],
            cgroups_path: "/hatch/abc".into(),
        };
        let json = serde_json::to_value(spec(&config)?)?;
        assert_eq!(json["process"]["args"][0], INIT_PATH_IN_CONTAINER);
        assert_eq!(json["process"]["capabilities"]["bounding"].as_array().map(Vec::len), Some(14));
        let init_mount = json["mounts"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["destination"] == INIT_PATH_IN_CONTAINER))
            .ok_or("no init mount")?;
        assert!(init_mount["options"].as_array().is_some_and(|o| o.contains(&"ro".into())));
        assert_eq!(json["hostname"], "abc");
        Ok(())
    }
}
