//! A small hand-written SVG: throughput over time (left) and the latency distribution (right),
//! one line per target, using each target's median run.
//!
//! The latency panel puts percentiles on the usual "nines" axis (x = log10(1 / (1 − p)), so
//! 90, 99, 99.9 … are evenly spaced) and latency on a log axis.

use std::fmt::Write;

use crate::report::RunResult;

const W: f64 = 900.0;
const H: f64 = 360.0;
const PANEL_W: f64 = 380.0;
const PANEL_H: f64 = 260.0;
const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

struct Panel {
    x0: f64,
    y0: f64,
}

impl Panel {
    fn map(&self, (x, y): (f64, f64), (xmax, ymin, ymax): (f64, f64, f64)) -> (f64, f64) {
        let px = self.x0 + PANEL_W * (x / xmax.max(1e-12)).clamp(0.0, 1.0);
        let fy = ((y - ymin) / (ymax - ymin).max(1e-12)).clamp(0.0, 1.0);
        (px, self.y0 + PANEL_H * (1.0 - fy))
    }
}

fn nines(p: f64) -> f64 {
    let rest = (1.0 - p / 100.0).max(1e-6);
    (1.0 / rest).log10()
}

fn polyline(svg: &mut String, pts: &[(f64, f64)], color: &str) {
    let coords: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    let _ = writeln!(
        svg,
        r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
        coords.join(" ")
    );
}

fn text(svg: &mut String, x: f64, y: f64, anchor: &str, s: &str) {
    let _ = writeln!(
        svg,
        r#"<text x="{x:.1}" y="{y:.1}" text-anchor="{anchor}" font-size="11">{s}</text>"#
    );
}

/// Renders the runs (one per target) as an SVG document.
pub fn svg(runs: &[&RunResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif">"#
    );
    let left = Panel { x0: 60.0, y0: 40.0 };
    let right = Panel {
        x0: 500.0,
        y0: 40.0,
    };
    for p in [&left, &right] {
        let _ = writeln!(
            s,
            r##"<rect x="{}" y="{}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#888"/>"##,
            p.x0, p.y0
        );
    }
    let title = runs
        .first()
        .map_or_else(String::new, |r| format!("{:?}", r.scenario).to_lowercase());
    text(
        &mut s,
        left.x0 + PANEL_W / 2.0,
        25.0,
        "middle",
        &format!("{title}: delivered events/s over time"),
    );
    text(
        &mut s,
        right.x0 + PANEL_W / 2.0,
        25.0,
        "middle",
        "end-to-end latency by percentile",
    );

    let tput: Vec<Vec<(f64, f64)>> = runs.iter().map(|r| r.throughput_points()).collect();
    let tmax = tput.iter().flatten().map(|p| p.0).fold(0.1, f64::max);
    let ymax = tput.iter().flatten().map(|p| p.1).fold(1.0, f64::max);
    let lat: Vec<Vec<(f64, f64)>> = runs
        .iter()
        .map(|r| {
            r.latency_curve
                .iter()
                .map(|&(p, v)| (nines(p), v.max(1.0).log10()))
                .collect()
        })
        .collect();
    let lmax = lat.iter().flatten().map(|p| p.1).fold(1.0, f64::max).ceil();
    let nmax = 5.0;

    for (i, run) in runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<_> = tput[i]
            .iter()
            .map(|&p| left.map(p, (tmax, 0.0, ymax)))
            .collect();
        polyline(&mut s, &pts, color);
        let pts: Vec<_> = lat[i]
            .iter()
            .map(|&p| right.map(p, (nmax, 0.0, lmax)))
            .collect();
        polyline(&mut s, &pts, color);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-size="12" fill="{color}">{} run {}</text>"#,
            left.x0 + 10.0 + 140.0 * i as f64,
            H - 12.0,
            run.target,
            run.run
        );
    }
    // Axis labels: throughput.
    text(&mut s, left.x0 - 5.0, left.y0 + 10.0, "end", &human(ymax));
    text(&mut s, left.x0 - 5.0, left.y0 + PANEL_H, "end", "0");
    text(
        &mut s,
        left.x0 + PANEL_W,
        left.y0 + PANEL_H + 15.0,
        "end",
        &format!("{tmax:.1} s"),
    );
    // Axis labels: latency (decades of µs) and percentiles.
    for d in 0..=(lmax as i32) {
        let (_, y) = right.map((0.0, f64::from(d)), (nmax, 0.0, lmax));
        let label = match d {
            0..=2 => format!("{}µs", 10f64.powi(d)),
            3..=5 => format!("{}ms", 10f64.powi(d - 3)),
            _ => format!("{}s", 10f64.powi(d - 6)),
        };
        text(&mut s, right.x0 - 5.0, y + 4.0, "end", &label);
    }
    for (n, label) in [
        (0.0, "0"),
        (1.0, "90"),
        (2.0, "99"),
        (3.0, "99.9"),
        (4.0, "99.99"),
        (5.0, "99.999"),
    ] {
        let (x, _) = right.map((n, 0.0), (nmax, 0.0, lmax));
        text(&mut s, x, right.y0 + PANEL_H + 15.0, "middle", label);
    }
    s.push_str("</svg>\n");
    s
}

fn human(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.1}M/s", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.0}k/s", x / 1e3)
    } else {
        format!("{x:.0}/s")
    }
}
