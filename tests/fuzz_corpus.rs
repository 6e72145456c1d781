//! Replays every checked-in fuzz corpus (`fuzz/corpus/TARGET/`) and every
//! past crash (`fuzz/regressions/TARGET/`) through the same checks the fuzz
//! targets run (`ignis_ws::fuzzing`), so a regression fails `cargo test`
//! without cargo-fuzz or a nightly toolchain. `FUZZ_INPUT=path TARGET` can
//! replay one file: `FUZZ_TARGET=frame_differential FUZZ_INPUT=… cargo
//! test --test fuzz_corpus -- --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: test code panics on failure by design

use std::path::Path;

fn replay_dir(target: &str, check: fn(&[u8]), dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries {
        let path = e.unwrap().path();
        if !path.is_file()
            || path
                .file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        let r = std::panic::catch_unwind(|| check(&data));
        assert!(r.is_ok(), "{target}: {} fails its check", path.display());
        n += 1;
    }
    n
}

#[test]
fn corpora_and_regressions_pass_their_checks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    if let (Ok(target), Ok(input)) = (std::env::var("FUZZ_TARGET"), std::env::var("FUZZ_INPUT")) {
        let (_, check) = ignis_ws::fuzzing::TARGETS
            .iter()
            .find(|(name, _)| *name == target)
            .expect("a known FUZZ_TARGET");
        check(&std::fs::read(input).unwrap());
        return;
    }
    for (target, check) in ignis_ws::fuzzing::TARGETS {
        let seeds = replay_dir(target, *check, &root.join("corpus").join(target));
        assert!(
            seeds > 0,
            "{target}: no seed corpus in fuzz/corpus/{target}"
        );
        let crashes = replay_dir(target, *check, &root.join("regressions").join(target));
        println!("{target}: {seeds} seeds, {crashes} past crashes replayed");
    }
}
