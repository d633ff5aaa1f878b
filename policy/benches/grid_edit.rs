//! The sharing grid's preview cost in the policy crate, per edit: the
//! grid applied to the policy text, then the text parsed, as the web UI
//! does on every change before the hub evaluates the last message. Over
//! a 200-rule policy (20 devices, 10 fields, a rule per field) and a grid
//! of 10 fields x 3 destinations.

use criterion::{criterion_group, criterion_main, Criterion};
use policy::edit::{apply_grid, Cell, GridEdit};
use policy::Policy;
use std::hint::black_box;

fn policy_text() -> String {
    let mut text = String::from("# a household's policy\n");
    for d in 0..20 {
        for f in 0..10 {
            text.push_str(&format!(
                "\n[[rule]]\ndevice = \"dev-{d}\"\nfield = \"f{f}\"\ndestination = \"vendor_cloud\"\naction = \"round\"\nstep = 0.5\n"
            ));
        }
    }
    text
}

fn grid() -> GridEdit {
    let fields: Vec<String> = (0..10).map(|f| format!("f{f}")).collect();
    let mut cells = Vec::new();
    for f in &fields {
        for d in ["vendor_cloud", "utility", "local"] {
            cells.push(Cell {
                field: f.clone(),
                destination: d.into(),
                action: Some("round".into()),
                params: "step = 1".into(),
            });
        }
    }
    GridEdit {
        device: "dev-7".into(),
        fields,
        cells,
        not_stored: Some(vec!["f9".into()]),
        retention: Some("30d".into()),
    }
}

fn bench(c: &mut Criterion) {
    let text = policy_text();
    let edit = grid();
    c.bench_function("grid edit: apply 30 cells to a 200-rule policy", |b| {
        b.iter(|| apply_grid(black_box(&text), black_box(&edit)))
    });
    c.bench_function("grid edit: apply and parse the candidate", |b| {
        b.iter(|| {
            let candidate = apply_grid(black_box(&text), black_box(&edit)).unwrap_or_default();
            Policy::parse(&candidate).is_ok()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
