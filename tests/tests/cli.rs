//! The command line as a user meets it: exit codes (0 ok, 1 runtime
//! failure, 2 bad usage or input) and one clear sentence on stderr.

use anyhow::Result;
use dataward_tests::*;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The command exited with `code` and said `needle` on stderr.
fn assert_fails_with(o: &std::process::Output, code: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() -> Result<()> {
    let help = cli(&["--help"])?;
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    for cmd in ["run", "device", "policy", "export"] {
        assert!(text.contains(cmd), "--help lists {cmd}");
    }
    assert_eq!(cli(&["frobnicate"])?.status.code(), Some(2));
    assert_eq!(cli(&["device", "add"])?.status.code(), Some(2));
    let dir = tempfile::tempdir()?;
    let bad = cli(&[
        "device",
        "add",
        "x",
        "--preset",
        "nope",
        "--data-dir",
        &dir.path().to_string_lossy(),
    ])?;
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("unknown preset"), "{}", stderr(&bad));
    Ok(())
}

#[test]
fn broken_config_and_policy_name_line_and_column() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("dataward.toml");
    std::fs::write(&config, "data_dir = \"x\"\nlisten = 1\n")?;
    let out = cli(&["run", "--config", &config.to_string_lossy()])?;
    assert_fails_with(&out, 2, "line 2, column 1");
    assert!(!stderr(&out).contains("panicked"));

    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[rule]]\ndevice = \"a\"\nfield = \"temp\"\ndestination = \"*\"\naction = \"launch\"\n",
    )?;
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n",
            dir.path().join("data").display().to_string()
        ),
    )?;
    let out = cli(&[
        "policy",
        "check",
        &policy.to_string_lossy(),
        "--config",
        &config.to_string_lossy(),
    ])?;
    assert_fails_with(&out, 2, "line 5, column 10");

    // The gateway refuses to start on that policy, rather than sharing
    // something the user did not mean.
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\npolicy = {:?}\n",
            dir.path().join("data").display().to_string(),
            policy.display().to_string()
        ),
    )?;
    let out = cli(&[
        "run",
        "--config",
        &config.to_string_lossy(),
        "--mqtt-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ])?;
    assert_fails_with(&out, 2, "unknown action");

    std::fs::write(
        &policy,
        "[[rule]]\ndevice = \"a\"\nfield = \"temp\"\ndestination = \"*\"\naction = \"share\"\n",
    )?;
    let ok = cli(&[
        "policy",
        "check",
        &policy.to_string_lossy(),
        "--config",
        &config.to_string_lossy(),
    ])?;
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    Ok(())
}

#[test]
fn a_corrupt_store_is_a_clear_runtime_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(broken.join("db"))?;
    std::fs::write(broken.join("db").join("conf"), b"\xff\xfe garbage")?;
    std::fs::write(broken.join("db").join("db"), vec![0xa5u8; 4096])?;
    let out = cli(&["device", "list", "--data-dir", &broken.to_string_lossy()])?;
    assert_fails_with(&out, 1, "error: cannot open the store in");
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    Ok(())
}

#[test]
fn device_add_prints_credentials_once_and_list_never_does() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let d = add_device(&data, "Kitchen <script>alert(1)</script> Plug", "tasmota")?;
    assert_eq!(d.id, "kitchen-script-alert-1-script-plug");
    assert!(d.password.len() >= 32);
    let list = cli(&[
        "device",
        "list",
        "--json",
        "--data-dir",
        &data.to_string_lossy(),
    ])?;
    assert_eq!(list.status.code(), Some(0));
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains(&d.id));
    assert!(
        !text.contains(&d.password),
        "the password is shown only once"
    );
    assert!(!text.contains("argon2"), "the hash is not shown either");
    let again = cli(&[
        "device",
        "add",
        "Kitchen <script>alert(1)</script> Plug",
        "--data-dir",
        &data.to_string_lossy(),
    ])?;
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("already exists"));
    let rm = cli(&[
        "device",
        "remove",
        &d.id,
        "--data-dir",
        &data.to_string_lossy(),
    ])?;
    assert_eq!(rm.status.code(), Some(0));
    let rm = cli(&[
        "device",
        "remove",
        &d.id,
        "--data-dir",
        &data.to_string_lossy(),
    ])?;
    assert_eq!(rm.status.code(), Some(2));
    Ok(())
}

#[test]
fn ctrl_c_stops_the_gateway_cleanly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let cloud = Cloud::start()?;
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, None, ""))?;
    let status = gw.interrupt()?;
    assert!(status.success(), "SIGINT gives a clean exit: {status:?}");
    assert!(std::fs::read_to_string(dir.path().join("gateway.log"))?.contains("stopped cleanly"));
    Ok(())
}

#[test]
fn the_embedded_defaults_keep_running() -> Result<()> {
    // No destination, no policy, no config beyond the data directory: what
    // `dataward run` does on a fresh machine.
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut gw = Gateway::start(
        dir.path(),
        &format!("data_dir = {:?}\n", data.display().to_string()),
    )?;
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(gw.is_running(), "it stays up: {}", gw.log());
    assert!(gw.healthz()?.contains("200 OK"));
    let status = cli_json(&data, &["status"])?;
    assert_eq!(status["running"], true);
    assert!(gw.stop()?.success());
    Ok(())
}

/// A policy may name a device that is not registered yet: it is applied,
/// with a warning naming the device and the rule; a group or destination
/// that does not exist stays an error.
#[test]
fn unregistered_devices_in_a_policy_are_warned_about() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    add_device(&data, "thermo", "generic")?;
    let policy = write_policy(
        dir.path(),
        "[[rule]]\ndevice = \"thermo\"\nfield = \"temp\"\ndestination = \"*\"\naction = \"share\"\n\n\
         [[rule]]\ndevice = \"ghost\"\nfield = \"temp\"\ndestination = \"*\"\naction = \"share\"\n",
    )?;
    let p = policy.to_string_lossy().into_owned();
    let checked = cli_json(&data, &["policy", "check", &p])?;
    let warnings = checked["warnings"].as_array().cloned().unwrap_or_default();
    assert_eq!(warnings.len(), 1, "{checked}");
    let w = warnings[0].as_str().unwrap_or_default();
    assert!(w.contains("\"ghost\"") && w.contains("line 7"), "{w}");
    let text = cli_ok(&data, &["policy", "apply", &p])?;
    assert!(
        text.contains("applied") && text.contains("warning: device \"ghost\""),
        "{text}"
    );
    let bad = write_policy(
        dir.path(),
        "[[rule]]\ndevice = \"@nogroup\"\nfield = \"temp\"\ndestination = \"*\"\naction = \"share\"\n",
    )?;
    let out = cli(&[
        "policy",
        "check",
        &bad.to_string_lossy(),
        "--data-dir",
        &data.to_string_lossy(),
    ])?;
    assert_eq!(out.status.code(), Some(2));
    Ok(())
}
