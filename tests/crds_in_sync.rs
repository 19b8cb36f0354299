//! The CRD YAML committed in `crds/` and in the Helm chart must be exactly what
//! `shardplane crds` generates, so a change to the API types cannot ship without its CRDs.

use std::path::Path;

fn assert_folder_matches(folder: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(folder);
    let generated = shardplane::api::crd_files().unwrap();
    for (file, yaml) in &generated {
        let committed = std::fs::read_to_string(root.join(file)).unwrap_or_else(|e| {
            panic!("{folder}/{file} is missing ({e}); run `shardplane crds --dir {folder}`")
        });
        assert!(
            committed == *yaml,
            "{folder}/{file} differs from `shardplane crds`; run `shardplane crds --dir {folder}`"
        );
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = generated.into_iter().map(|(file, _)| file).collect();
    expected.sort();
    assert_eq!(
        on_disk, expected,
        "{folder} holds files that `shardplane crds` does not generate"
    );
}

#[test]
fn crds_folder_matches_generated() {
    assert_folder_matches("crds");
}

#[test]
fn helm_chart_crds_match_generated() {
    assert_folder_matches("charts/shardplane/crds");
}
