//! The sweep's plots as hand-written SVG: scatter plots with labelled points, linear axes
//! with round ticks, and the Pareto front of loss against decode latency.

use std::fmt::Write;

pub struct Point {
    pub label: String,
    pub parameters: f64,
    pub encode_ms: f64,
    pub decode_ms: f64,
    pub loss: Option<f64>,
}

const W: f64 = 720.0;
const H: f64 = 480.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

/// Encode latency and decode latency per token against parameters (millions).
pub fn latency_vs_parameters(points: &[Point]) -> String {
    let xs: Vec<f64> = points.iter().map(|p| p.parameters / 1e6).collect();
    let series = [
        (
            "decode ms / token",
            "#d62728",
            points.iter().map(|p| p.decode_ms).collect::<Vec<_>>(),
        ),
        (
            "encode ms",
            "#1f77b4",
            points.iter().map(|p| p.encode_ms).collect(),
        ),
    ];
    let ys: Vec<f64> = series.iter().flat_map(|s| s.2.iter().copied()).collect();
    let mut c = Canvas::new(
        "Latency against parameters",
        "parameters (millions)",
        "latency (ms)",
        &xs,
        &ys,
    );
    for (i, (name, color, y)) in series.iter().enumerate() {
        for (k, p) in points.iter().enumerate() {
            c.dot(
                xs[k],
                y[k],
                color,
                &format!("{}: {name} {:.3}", p.label, y[k]),
            );
        }
        c.legend(i, name, color);
    }
    c.finish()
}

/// Held-out loss against decode latency, with the Pareto front (no other variant is both
/// faster and lower in loss) joined by a line.
pub fn loss_vs_latency(points: &[Point]) -> String {
    let pts: Vec<(&Point, f64)> = points
        .iter()
        .filter_map(|p| p.loss.map(|l| (p, l)))
        .collect();
    let xs: Vec<f64> = pts.iter().map(|(p, _)| p.decode_ms).collect();
    let ys: Vec<f64> = pts.iter().map(|(_, l)| *l).collect();
    let mut c = Canvas::new(
        "Held-out loss against decode latency",
        "decode latency (ms / token)",
        "held-out loss",
        &xs,
        &ys,
    );
    let front = pareto_front(&xs, &ys);
    c.polyline(
        &front.iter().map(|&i| (xs[i], ys[i])).collect::<Vec<_>>(),
        "#2ca02c",
    );
    for (k, (p, l)) in pts.iter().enumerate() {
        let color = if front.contains(&k) {
            "#2ca02c"
        } else {
            "#7f7f7f"
        };
        c.dot(
            xs[k],
            *l,
            color,
            &format!("{}: loss {l:.4}, {:.3} ms", p.label, xs[k]),
        );
    }
    c.legend(0, "Pareto front", "#2ca02c");
    c.finish()
}

/// Indices of the points no other point dominates (lower or equal in both, lower in one),
/// ordered by x.
pub fn pareto_front(xs: &[f64], ys: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..xs.len()).collect();
    order.sort_by(|&a, &b| xs[a].total_cmp(&xs[b]).then(ys[a].total_cmp(&ys[b])));
    let mut best = f64::INFINITY;
    let mut front = vec![];
    for i in order {
        if ys[i] < best {
            best = ys[i];
            front.push(i);
        }
    }
    front
}

struct Canvas {
    svg: String,
    x: (f64, f64),
    y: (f64, f64),
}

impl Canvas {
    fn new(title: &str, xlabel: &str, ylabel: &str, xs: &[f64], ys: &[f64]) -> Canvas {
        let x = nice_range(xs);
        let y = nice_range(ys);
        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">{}</text>
"#,
            W / 2.0,
            esc(title),
            LEFT + (W - LEFT - RIGHT) / 2.0,
            H - 15.0,
            esc(xlabel),
            TOP + (H - TOP - BOTTOM) / 2.0,
            TOP + (H - TOP - BOTTOM) / 2.0,
            esc(ylabel)
        );
        let mut c = Canvas { svg, x, y };
        c.axes();
        c
    }

    fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.x.0) / (self.x.1 - self.x.0) * (W - LEFT - RIGHT)
    }

    fn py(&self, y: f64) -> f64 {
        H - BOTTOM - (y - self.y.0) / (self.y.1 - self.y.0) * (H - TOP - BOTTOM)
    }

    fn axes(&mut self) {
        let (x0, x1, y0, y1) = (LEFT, W - RIGHT, H - BOTTOM, TOP);
        let _ = writeln!(
            self.svg,
            r##"<rect x="{x0}" y="{y1}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
            x1 - x0,
            y0 - y1
        );
        for t in ticks(self.x) {
            let p = self.px(t);
            let _ = writeln!(
                self.svg,
                r##"<line x1="{p:.1}" y1="{y0}" x2="{p:.1}" y2="{y1}" stroke="#eee"/><text x="{p:.1}" y="{}" text-anchor="middle">{}</text>"##,
                y0 + 16.0,
                fmt_tick(t)
            );
        }
        for t in ticks(self.y) {
            let p = self.py(t);
            let _ = writeln!(
                self.svg,
                r##"<line x1="{x0}" y1="{p:.1}" x2="{x1}" y2="{p:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                x0 - 6.0,
                p + 4.0,
                fmt_tick(t)
            );
        }
    }

    fn dot(&mut self, x: f64, y: f64, color: &str, title: &str) {
        let _ = writeln!(
            self.svg,
            r#"<circle cx="{:.1}" cy="{:.1}" r="5" fill="{color}"><title>{}</title></circle>"#,
            self.px(x),
            self.py(y),
            esc(title)
        );
    }

    fn polyline(&mut self, pts: &[(f64, f64)], color: &str) {
        let p: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", self.px(x), self.py(y)))
            .collect();
        let _ = writeln!(
            self.svg,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            p.join(" ")
        );
    }

    fn legend(&mut self, i: usize, name: &str, color: &str) {
        let y = TOP + 16.0 + 18.0 * i as f64;
        let _ = writeln!(
            self.svg,
            r#"<circle cx="{}" cy="{y}" r="5" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
            LEFT + 16.0,
            LEFT + 26.0,
            y + 4.0,
            esc(name)
        );
    }

    fn finish(mut self) -> String {
        self.svg.push_str("</svg>\n");
        self.svg
    }
}

/// The data range padded by 5% (a single value gets ±1 or ±10%).
fn nice_range(v: &[f64]) -> (f64, f64) {
    let finite: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    let (lo, hi) = finite
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let span = if hi > lo {
        hi - lo
    } else {
        lo.abs().max(10.0) * 0.1
    };
    (lo - 0.05 * span, hi + 0.05 * span)
}

/// About five round tick values inside `r`.
fn ticks(r: (f64, f64)) -> Vec<f64> {
    let raw = (r.1 - r.0) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut t = (r.0 / step).ceil() * step;
    let mut out = vec![];
    while t <= r.1 && out.len() < 20 {
        out.push(t);
        t += step;
    }
    out
}

fn fmt_tick(t: f64) -> String {
    let s = format!("{t:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pareto_front_keeps_the_undominated() {
        // (latency, loss): 1 dominates 3; 0, 1, 4 form the front.
        let xs = [1.0, 2.0, 4.0, 3.0, 5.0];
        let ys = [3.0, 2.0, 2.5, 2.2, 1.0];
        assert_eq!(pareto_front(&xs, &ys), vec![0, 1, 4]);
    }

    #[test]
    fn the_loss_plot_joins_the_front() {
        let p = |label: &str, decode_ms: f64, loss: f64| Point {
            label: label.into(),
            parameters: 1e6,
            encode_ms: 1.0,
            decode_ms,
            loss: Some(loss),
        };
        let svg = loss_vs_latency(&[p("a", 1.0, 3.0), p("b", 2.0, 2.0), p("c", 3.0, 2.5)]);
        assert_eq!(svg.matches("<polyline").count(), 1);
        // Two points on the front and the legend in green, one dominated in grey.
        assert_eq!(svg.matches(r##"fill="#2ca02c""##).count(), 3);
        assert_eq!(svg.matches(r##"fill="#7f7f7f""##).count(), 1);
    }

    #[test]
    fn ticks_are_round_and_inside() {
        assert_eq!(ticks((0.0, 10.0)), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks((0.13, 0.91));
        assert!(
            t.iter().all(|&x| (0.13..=0.91).contains(&x)) && t.len() >= 3,
            "{t:?}"
        );
    }
}
