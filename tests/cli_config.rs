//! `kestra config show` and how `-c` treats bad files: the effective configuration with the source
//! of each value and secrets masked; a file that is not a mapping is refused; unknown keys warned
//! about with the closest known key.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn kestra(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kestra"));
    for (var, _) in std::env::vars() {
        if var.starts_with("KESTRA_") || var.starts_with("DATASOURCES_") || var == "NO_COLOR" {
            cmd.env_remove(var);
        }
    }
    let output = cmd.args(args).envs(env.iter().copied()).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn config_show_prints_values_sources_and_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("application.yml");
    std::fs::write(
        &file,
        "kestra:\n  repository:\n    type: postgres\n  worker:\n    thread: 4\ndatasources:\n  postgres:\n    url: jdbc:postgresql://kestra:s3cret@127.0.0.1/kestra\n",
    )
    .unwrap();
    let (code, out, err) = kestra(
        &["config", "show", "-c", file.to_str().unwrap()],
        &[
            ("KESTRA_DATA_DIR", "/srv/kestra"),
            ("DATASOURCES_POSTGRES_PASSWORD", "hunter2"),
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let line = |key: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key}: {out}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let f = file.display();
    assert_eq!(
        line("kestra.repository.type"),
        format!("kestra.repository.type = postgres (file {f})")
    );
    assert_eq!(
        line("datasources.postgres.url"),
        format!(
            "datasources.postgres.url = jdbc:postgresql://kestra:********@127.0.0.1/kestra (file {f})"
        )
    );
    assert_eq!(
        line("datasources.postgres.password"),
        "datasources.postgres.password = ******** (environment DATASOURCES_POSTGRES_PASSWORD)"
    );
    assert_eq!(
        line("kestra.data-dir"),
        "kestra.data-dir = /srv/kestra (environment KESTRA_DATA_DIR)"
    );
    assert_eq!(
        line("kestra.storage.local.base-path"),
        "kestra.storage.local.base-path = /srv/kestra/storage (default)"
    );
    assert!(!out.contains("hunter2") && !out.contains("s3cret"), "{out}");
    assert!(
        out.contains("kestra.worker.thread: did you mean 'kestra.worker.threads'?"),
        "{out}"
    );
    assert!(
        err.contains("unknown configuration key 'kestra.worker.thread' (ignored); did you mean 'kestra.worker.threads'?"),
        "{err}"
    );
}

#[test]
fn a_configuration_file_that_is_not_a_mapping_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    std::fs::write(&passwd, "root:x:0:0:root:/root:/bin/bash\n").unwrap();
    for args in [
        vec!["config", "show", "-c"],
        vec!["server", "standalone", "-c"],
        vec!["sys", "purge-queue", "-c"],
    ] {
        let mut args = args.clone();
        args.push(passwd.to_str().unwrap());
        let (code, out, err) = kestra(&args, &[]);
        assert_eq!(code, 1, "{args:?}: {out}\n{err}");
        assert!(
            err.contains(&format!(
                "error: invalid configuration file {}: expected a mapping of keys (`kestra:` ...), found a string",
                passwd.display()
            )),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn completion_scripts_for_bash_zsh_and_fish() {
    for (shell, marker, option) in [
        ("bash", "complete -F _kestra", "--inputs"),
        ("zsh", "#compdef kestra", "--inputs"),
        ("fish", "complete -c kestra", "-l inputs"),
    ] {
        let (code, out, err) = kestra(&["completion", shell], &[]);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(out.contains(marker), "{shell}: {out}");
        // The subcommands and their options are in it.
        assert!(out.contains("validate") && out.contains(option), "{shell}");
    }
    let (code, _, err) = kestra(&["completion", "tcsh"], &[]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn bad_liveness_settings_stop_a_server_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let (code, _, stderr) = kestra(
        &["server", "worker"],
        &[
            ("KESTRA_DATA_DIR", data),
            ("KESTRA_SERVER_LIVENESS_HEARTBEATINTERVAL", "3s"),
            ("KESTRA_SERVER_LIVENESS_TIMEOUT", "4s"),
        ],
    );
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("kestra.server.liveness.timeout") && stderr.contains("two heartbeats"),
        "{stderr}"
    );
    let (code, _, stderr) = kestra(
        &["server", "worker"],
        &[("KESTRA_DATA_DIR", data), ("KESTRA_WORKER_LEASE", "soon")],
    );
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("kestra.worker.lease") && stderr.contains("'soon' is not a duration"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "a bad setting is reported before the database is created"
    );
}

#[test]
fn bad_resubmission_settings_stop_a_server_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let (code, _, stderr) = kestra(
        &["server", "executor"],
        &[
            ("KESTRA_DATA_DIR", data),
            ("KESTRA_SERVER_WORKER_TASK_RESTART_STRATEGY", "SOMETIMES"),
        ],
    );
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("kestra.server.worker-task-restart-strategy")
            && stderr.contains("SOMETIMES")
            && stderr.contains("AFTER_TERMINATION_GRACE_PERIOD"),
        "{stderr}"
    );
    let (code, _, stderr) = kestra(
        &["server", "executor"],
        &[
            ("KESTRA_DATA_DIR", data),
            ("KESTRA_SERVER_WORKER_TASK_MAX_RESUBMISSIONS", "many"),
        ],
    );
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("kestra.server.worker-task-max-resubmissions") && stderr.contains("'many'"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "a bad setting is reported before the database is created"
    );
}

#[test]
fn config_show_lists_the_liveness_keys() {
    let (code, stdout, stderr) = kestra(
        &["config", "show", "--no-color"],
        &[("KESTRA_SERVER_LIVENESS_TIMEOUT", "10s")],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("kestra.server.liveness.timeout = 10s")
            && stdout.contains("environment KESTRA_SERVER_LIVENESS_TIMEOUT"),
        "{stdout}"
    );
    for line in [
        "kestra.server.liveness.heartbeatInterval = PT3S",
        "kestra.worker.lease = PT2M",
        "kestra.server.terminationGracePeriod = PT1M",
        "kestra.server.worker-task-restart-strategy = AFTER_TERMINATION_GRACE_PERIOD",
        "kestra.server.worker-task-max-resubmissions = 3",
    ] {
        assert!(stdout.contains(line), "{line} in {stdout}");
    }
}
