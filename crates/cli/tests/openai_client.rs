//! The official `openai` Python client (installed from PyPI into a virtualenv under the target
//! directory by this test) against `pagoda serve` on stories260k: see openai_client.py.

mod support;

use std::path::Path;
use std::process::Command;

use pagoda_model::test_support::shared_dir;
use support::ServerProcess;

/// A virtualenv with `openai` and `prometheus_client`, created on first use.
fn python_env() -> Option<std::path::PathBuf> {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("openai-venv");
    let python = venv.join("bin/python");
    let ready = python.exists()
        && Command::new(&python)
            .args(["-c", "import openai, prometheus_client"])
            .status()
            .is_ok_and(|s| s.success());
    if ready {
        return Some(python);
    }
    let created = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success());
    if !created {
        let why = "python3 with the venv module is not available";
        assert!(!in_ci(), "{why} (required in CI)");
        eprintln!("SKIPPED openai_client: {why}");
        return None;
    }
    let installed = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["openai>=1.40,<3", "prometheus-client>=0.20"])
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        let why = "pip could not install openai and prometheus-client from PyPI";
        assert!(!in_ci(), "{why} (required in CI)");
        eprintln!("SKIPPED openai_client: {why}");
        return None;
    }
    Some(python)
}

#[test]
fn the_openai_python_client_gets_golden_text() {
    let Some(shared) = shared_dir("openai_client") else {
        return;
    };
    let Some(python) = python_env() else {
        return;
    };
    let model = shared.join("models/stories260k");
    let server = ServerProcess::start(&[
        "--model",
        model.to_str().unwrap(),
        "--served-model-name",
        "stories260k",
    ]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let output = Command::new(python)
        .arg(script)
        .arg(format!("http://{}", server.addr))
        .arg(shared.join("golden/stories260k_greedy.json"))
        .arg("stories260k")
        .output()
        .expect("run the openai client script");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "openai_client.py failed:\n{stdout}\n{stderr}\nserver log:\n{}",
        server.log.lock().unwrap()
    );
    eprintln!("{stdout}");
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}
