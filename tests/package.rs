//! The man pages and completions generated from the CLI, and the .deb and
//! .rpm that scripts/package.sh builds from the binary under test: every
//! packaged file is where the unit and the README say, with the right
//! content and mode; the installed binary runs; the installed unit verifies.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const BIN: &str = env!("CARGO_BIN_EXE_route-failover");
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Output {
    let program = program.as_ref();
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program:?}: {e}"));
    assert!(
        out.status.success(),
        "{program:?} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The operator's subcommands, as `--help` lists them.
fn subcommands() -> Vec<String> {
    let help = stdout(&run(BIN, &["--help"]));
    let list = help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("\n\n")
        .next()
        .unwrap();
    let names: Vec<String> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect();
    assert!(names.len() >= 5, "{names:?}");
    names
}

/// The `(code, meaning)` rows of a `--help`'s "Exit status:" section.
fn exit_codes(help: &str) -> Vec<(String, String)> {
    let section = help
        .split("Exit status:")
        .nth(1)
        .expect("an Exit status section");
    let rows: Vec<(String, String)> = section
        .lines()
        .filter_map(|l| l.trim().split_once(char::is_whitespace))
        .map(|(code, meaning)| (code.to_string(), meaning.trim().to_string()))
        .collect();
    // Every command says what success is; each row is a number and a meaning.
    assert!(rows.iter().any(|(c, _)| c == "0"), "{rows:?}");
    assert!(
        rows.iter().all(|(c, _)| c.parse::<u8>().is_ok()),
        "{rows:?}"
    );
    rows
}

/// Roff with its escapes undone, enough to compare with `--help` text.
fn plain(roff: &str) -> String {
    roff.replace("\\fB", "")
        .replace("\\fR", "")
        .replace("\\-", "-")
        .replace("\\*(Aq", "'")
}

fn assert_man_pages(pages: &Path, gzipped: bool) {
    let suffix = if gzipped { ".1.gz" } else { ".1" };
    let mut expected: BTreeSet<String> = subcommands()
        .iter()
        .map(|c| format!("route-failover-{c}{suffix}"))
        .collect();
    expected.insert(format!("route-failover{suffix}"));
    let found: BTreeSet<String> = std::fs::read_dir(pages)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(found, expected, "man pages in {}", pages.display());
    for (page, args) in std::iter::once((
        format!("route-failover{suffix}"),
        vec!["--help".to_string()],
    ))
    .chain(subcommands().into_iter().map(|c| {
        (
            format!("route-failover-{c}{suffix}"),
            vec![c, "--help".into()],
        )
    })) {
        let bytes = std::fs::read(pages.join(&page)).unwrap();
        let mut text = String::new();
        if gzipped {
            let out = Command::new("gzip")
                .args(["-dc"])
                .arg(pages.join(&page))
                .output()
                .unwrap();
            assert!(out.status.success());
            text = String::from_utf8(out.stdout).unwrap();
        } else {
            bytes.as_slice().read_to_string(&mut text).unwrap();
        }
        let text = plain(&text);
        assert!(text.contains(".TH route-failover"), "{page}: no title");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let help = stdout(&run(BIN, &args));
        let status = text
            .split(".SH \"EXIT STATUS\"")
            .nth(1)
            .unwrap_or_else(|| panic!("{page}: no EXIT STATUS section"));
        for (code, meaning) in exit_codes(&help) {
            assert!(
                status.contains(&format!(".TP\n{code}\n{meaning}\n")),
                "{page}: exit code {code} ({meaning}) missing from\n{status}"
            );
        }
    }
}

#[test]
fn every_man_page_lists_the_exit_codes_of_its_help() {
    let dir = tempfile::tempdir().unwrap();
    run(BIN, &["man", dir.path().to_str().unwrap()]);
    assert_man_pages(dir.path(), false);
    // The generators are for packaging, not for the operator's --help.
    let help = stdout(&run(BIN, &["--help"]));
    assert!(
        !help.contains("completions") && !help.contains("man "),
        "{help}"
    );
}

/// `config_flag` is how the shell's script spells `--config`.
fn assert_completions(shell: &str, script: &str, config_flag: &str) {
    for command in subcommands() {
        assert!(script.contains(&command), "{shell}: no {command}");
    }
    assert!(script.contains(config_flag), "{shell}: no --config");
    // The hidden packaging helpers are not offered.
    assert!(
        !script.contains("completions"),
        "{shell} offers `completions`"
    );
}

#[test]
fn completions_offer_every_command_and_are_valid_bash() {
    let bash = stdout(&run(BIN, &["completions", "bash"]));
    assert_completions("bash", &bash, "--config");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.bash"), &bash).unwrap();
    run("bash", &["-n", dir.path().join("c.bash").to_str().unwrap()]);
    let zsh = stdout(&run(BIN, &["completions", "zsh"]));
    assert!(zsh.starts_with("#compdef route-failover"));
    assert_completions("zsh", &zsh, "--config");
    let fish = stdout(&run(BIN, &["completions", "fish"]));
    assert!(fish.contains("complete -c route-failover"));
    assert_completions("fish", &fish, "-l config");
}

/// Whether `program` runs; outside CI a missing one skips the package tests.
fn have(program: &str, why: &str) -> bool {
    let ok = Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none()
                && std::env::var_os("ROUTE_FAILOVER_LOCALSTACK").is_none(),
            "{program} is missing ({why})"
        );
    }
    ok
}

/// The packages scripts/package.sh makes from this test's binary, built
/// once for every test here (the script reuses fixed paths under target/).
fn packages() -> Option<&'static (tempfile::TempDir, PathBuf, PathBuf)> {
    static PACKAGES: OnceLock<Option<(tempfile::TempDir, PathBuf, PathBuf)>> = OnceLock::new();
    PACKAGES
        .get_or_init(|| {
            let tools = have("cargo-deb", "scripts/test.sh installs it")
                & have("cargo-generate-rpm", "scripts/test.sh installs it")
                & have("dpkg-deb", "Debian's dpkg")
                & have(
                    "rpm",
                    "scripts/test.sh installs Debian's rpm package as root",
                );
            if !tools {
                return None;
            }
            let out = tempfile::tempdir().unwrap();
            let started = std::time::Instant::now();
            run(
                repo("scripts/package.sh"),
                &[
                    "--dev",
                    "--binary",
                    BIN,
                    "--out",
                    out.path().to_str().unwrap(),
                ],
            );
            eprintln!("scripts/package.sh --dev took {:.1?}", started.elapsed());
            let find = |ext: &str| {
                let found: Vec<PathBuf> = std::fs::read_dir(out.path())
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .filter(|p| p.extension().is_some_and(|e| e == ext))
                    .collect();
                assert_eq!(found.len(), 1, "{found:?}");
                found[0].clone()
            };
            let (deb, rpm) = (find("deb"), find("rpm"));
            Some((out, deb, rpm))
        })
        .as_ref()
}

/// Every file both packages install, with its mode, and the repository
/// file it must equal (`None`: generated, checked on its own).
fn expected_files(zsh_dir: &str) -> Vec<(String, u32, Option<&'static str>)> {
    let mut files = vec![
        ("/usr/bin/route-failover".to_string(), 0o755, None),
        (
            "/usr/lib/systemd/system/route-failover.service".into(),
            0o644,
            Some("systemd/route-failover.service"),
        ),
        (
            "/etc/route-failover/config.toml".into(),
            0o644,
            Some("config.example.toml"),
        ),
        (
            "/usr/share/doc/route-failover/config.example.toml".into(),
            0o644,
            Some("config.example.toml"),
        ),
        (
            "/usr/share/doc/route-failover/iam-policy.example.json".into(),
            0o644,
            Some("iam-policy.example.json"),
        ),
        (
            "/usr/share/doc/route-failover/README.md".into(),
            0o644,
            Some("README.md"),
        ),
        (
            "/usr/share/route-failover/prometheus/route-failover.rules.yml".into(),
            0o644,
            Some("deploy/prometheus/route-failover.rules.yml"),
        ),
        (
            "/usr/share/route-failover/grafana/route-failover.json".into(),
            0o644,
            Some("deploy/grafana/route-failover.json"),
        ),
        (
            "/usr/share/bash-completion/completions/route-failover".into(),
            0o644,
            None,
        ),
        (format!("{zsh_dir}/_route-failover"), 0o644, None),
        (
            "/usr/share/fish/vendor_completions.d/route-failover.fish".into(),
            0o644,
            None,
        ),
        (
            "/usr/share/man/man1/route-failover.1.gz".into(),
            0o644,
            None,
        ),
    ];
    for command in subcommands() {
        files.push((
            format!("/usr/share/man/man1/route-failover-{command}.1.gz"),
            0o644,
            None,
        ));
    }
    files
}

/// Checks an installed tree against [`expected_files`]; `extra` are files
/// only this package format has.
fn assert_installed(root: &Path, zsh_dir: &str, extra: &[&str]) {
    use std::os::unix::fs::PermissionsExt;
    let expected = expected_files(zsh_dir);
    let mut found = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.insert(format!("/{}", path.strip_prefix(root).unwrap().display()));
            }
        }
    }
    let wanted: BTreeSet<String> = expected
        .iter()
        .map(|(p, _, _)| p.clone())
        .chain(extra.iter().map(|p| p.to_string()))
        .collect();
    assert_eq!(found, wanted, "installed files");
    for (path, mode, source) in &expected {
        let file = root.join(path.trim_start_matches('/'));
        let actual = std::fs::metadata(&file).unwrap().permissions().mode() & 0o7777;
        assert_eq!(actual, *mode, "{path}: mode {actual:o}");
        if let Some(source) = source {
            assert!(
                std::fs::read(&file).unwrap() == std::fs::read(repo(source)).unwrap(),
                "{path} differs from {source}"
            );
        }
    }

    // The binary runs, and accepts the conffile it was installed with.
    let bin = root.join("usr/bin/route-failover");
    let version = stdout(&run(&bin, &["--version"]));
    assert_eq!(version.trim(), format!("route-failover {VERSION}"));
    let config = root.join("etc/route-failover/config.toml");
    run(
        &bin,
        &["check", "--offline", "--config", config.to_str().unwrap()],
    );

    assert_man_pages(&root.join("usr/share/man/man1"), true);
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    assert_eq!(
        read("usr/share/bash-completion/completions/route-failover"),
        stdout(&run(BIN, &["completions", "bash"]))
    );
    assert_eq!(
        read(&format!(
            "{}/_route-failover",
            zsh_dir.trim_start_matches('/')
        )),
        stdout(&run(BIN, &["completions", "zsh"]))
    );
    assert_eq!(
        read("usr/share/fish/vendor_completions.d/route-failover.fish"),
        stdout(&run(BIN, &["completions", "fish"]))
    );

    assert_unit_verifies(root);
}

/// `systemd-analyze verify` on the installed unit, with its binary and its
/// `man:` documentation resolved inside the scratch root.
fn assert_unit_verifies(root: &Path) {
    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system/route-failover.service"))
        .unwrap();
    for line in unit.lines().filter(|l| l.starts_with("ExecStart")) {
        assert!(line.contains("=/usr/bin/route-failover "), "{line}");
    }
    if !have("systemd-analyze", "systemd") {
        eprintln!("SKIPPED systemd-analyze verify: systemd-analyze is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = root.join("usr/bin/route-failover");
    let copy = dir.path().join("route-failover.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/route-failover", bin.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .env("MANPATH", root.join("usr/share/man"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

#[test]
fn the_deb_installs_everything_and_its_unit_verifies() {
    let Some((_dir, deb, _)) = packages() else {
        eprintln!(
            "SKIPPED the_deb_installs_everything_and_its_unit_verifies: packaging tools missing"
        );
        return;
    };
    let deb = deb.to_str().unwrap();
    let field = |name: &str| {
        stdout(&run("dpkg-deb", &["--field", deb, name]))
            .trim()
            .to_string()
    };
    assert_eq!(field("Package"), "route-failover");
    assert_eq!(field("Version"), format!("{VERSION}-1"));
    assert!(field("Depends").contains("libc6"));
    assert!(
        field("Description").lines().next().unwrap().len() < 80,
        "synopsis too long"
    );

    // Control files: the config is a conffile, and the scripts reload
    // systemd, stop the agent on removal, and never enable or start it.
    let control = tempfile::tempdir().unwrap();
    run(
        "dpkg-deb",
        &["--control", deb, control.path().to_str().unwrap()],
    );
    let read = |f: &str| std::fs::read_to_string(control.path().join(f)).unwrap_or_default();
    assert_eq!(read("conffiles").trim(), "/etc/route-failover/config.toml");
    for script in ["postinst", "prerm", "postrm"] {
        run("sh", &["-n", control.path().join(script).to_str().unwrap()]);
        assert!(read(script).contains("route-failover.service"), "{script}");
    }
    assert!(read("postinst").contains("daemon-reload"));
    assert!(read("prerm").contains("stop route-failover.service"));
    assert!(read("postinst").contains("try-restart route-failover.service"));
    assert!(
        !read("postinst").contains("deb-systemd-invoke start"),
        "must not start before the config is edited"
    );

    // Installed into a scratch root, which goes with the test.
    let root = tempfile::tempdir().unwrap();
    run(
        "dpkg-deb",
        &["--extract", deb, root.path().to_str().unwrap()],
    );
    assert_installed(
        root.path(),
        "/usr/share/zsh/vendor-completions",
        &["/usr/share/doc/route-failover/copyright"],
    );
    let copyright =
        std::fs::read_to_string(root.path().join("usr/share/doc/route-failover/copyright"))
            .unwrap();
    assert!(copyright.contains("MIT OR Apache-2.0"), "{copyright}");
}

#[test]
fn the_rpm_installs_everything_marks_the_config_noreplace_and_erases() {
    let Some((_dir, _, rpm)) = packages() else {
        eprintln!("SKIPPED the_rpm_installs_everything_marks_the_config_noreplace_and_erases: packaging tools missing");
        return;
    };
    let rpm = rpm.to_str().unwrap();
    let query = |format: &str| stdout(&run("rpm", &["-qp", "--qf", format, rpm]));
    assert_eq!(
        query("%{NAME} %{VERSION}-%{RELEASE}"),
        format!("route-failover {VERSION}-1")
    );
    let flags = query("[%{FILENAMES} %{FILEFLAGS:fflags}\n]");
    assert!(
        flags.contains("/etc/route-failover/config.toml cn\n"),
        "config must be %config(noreplace):\n{flags}"
    );
    let scripts = stdout(&run("rpm", &["-qp", "--scripts", rpm]));
    assert!(
        scripts.contains("disable --now route-failover.service"),
        "{scripts}"
    );
    assert!(
        scripts.contains("try-restart route-failover.service"),
        "{scripts}"
    );
    assert!(!scripts.contains("enable route-failover"), "{scripts}");

    // A real install into a scratch root with its own database (no
    // scriptlets: they would talk to this machine's systemd), then erase.
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap();
    run("rpm", &["--root", r, "--initdb"]);
    run(
        "rpm",
        &[
            "--root",
            r,
            "-i",
            "--nodeps",
            "--noscripts",
            "--force-debian",
            rpm,
        ],
    );
    let installed = tempfile::tempdir().unwrap();
    // Compare only what the package says it installed (the database lives
    // in the root too): copies keep their modes.
    for path in stdout(&run("rpm", &["--root", r, "-ql", "route-failover"])).lines() {
        let to = installed.path().join(path.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(root.path().join(path.trim_start_matches('/')), &to).unwrap();
    }
    assert_installed(installed.path(), "/usr/share/zsh/site-functions", &[]);
    assert_eq!(
        stdout(&run("rpm", &["--root", r, "-qc", "route-failover"])).trim(),
        "/etc/route-failover/config.toml"
    );
    run(
        "rpm",
        &[
            "--root",
            r,
            "-e",
            "--nodeps",
            "--noscripts",
            "route-failover",
        ],
    );
    for (path, _, _) in expected_files("/usr/share/zsh/site-functions") {
        assert!(
            !root.path().join(path.trim_start_matches('/')).exists(),
            "{path} left after erase"
        );
    }
}
