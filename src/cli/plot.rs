//! Plots as hand-written SVG: a canvas with linear axes and round ticks, points, lines and a
//! legend (used by `sweep`, `train` and `report`), and line charts of several series.

use std::fmt::Write;

const W: f64 = 720.0;
const H: f64 = 480.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

pub struct Canvas {
    svg: String,
    x: (f64, f64),
    y: (f64, f64),
}

impl Canvas {
    pub fn new(title: &str, xlabel: &str, ylabel: &str, xs: &[f64], ys: &[f64]) -> Canvas {
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

    pub fn dot(&mut self, x: f64, y: f64, color: &str, title: &str) {
        let _ = writeln!(
            self.svg,
            r#"<circle cx="{:.1}" cy="{:.1}" r="5" fill="{color}"><title>{}</title></circle>"#,
            self.px(x),
            self.py(y),
            esc(title)
        );
    }

    pub fn polyline(&mut self, pts: &[(f64, f64)], color: &str) {
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

    pub fn legend(&mut self, i: usize, name: &str, color: &str) {
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

    pub fn finish(mut self) -> String {
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
    // Multiples of the step, each from its index (a running sum drifts), divided by a power
    // of ten last so that 23 · 0.1 is the double nearest 2.3.
    let scale = 10f64.powi((-step.log10().floor()).max(0.0) as i32);
    let first = (r.0 / step).ceil() as i64;
    let last = (r.1 / step + 1e-9).floor() as i64;
    (first..=last.min(first + 19))
        .map(|k| (k as f64 * step * scale).round() / scale)
        .collect()
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

/// Colours of successive series.
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Line,
    Points,
}

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub style: Style,
}

pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

impl Chart {
    pub fn to_svg(&self) -> String {
        let finite = |s: &Series| -> Vec<(f64, f64)> {
            s.points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect()
        };
        let all: Vec<(f64, f64)> = self.series.iter().flat_map(finite).collect();
        let xs: Vec<f64> = all.iter().map(|p| p.0).collect();
        let ys: Vec<f64> = all.iter().map(|p| p.1).collect();
        let mut c = Canvas::new(&self.title, &self.x_label, &self.y_label, &xs, &ys);
        for (i, s) in self.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let pts = finite(s);
            match s.style {
                Style::Line => c.polyline(&pts, color),
                Style::Points => {
                    for &(x, y) in &pts {
                        c.dot(x, y, color, &format!("{}: {y:.4} at {x}", s.name));
                    }
                }
            }
            c.legend(i, &s.name, color);
        }
        c.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_inside() {
        assert_eq!(ticks((0.0, 10.0)), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(ticks((2.13, 2.61)), vec![2.2, 2.3, 2.4, 2.5, 2.6]);
        let t = ticks((0.13, 0.91));
        assert!(
            t.iter().all(|&x| (0.13..=0.91).contains(&x)) && t.len() >= 3,
            "{t:?}"
        );
    }

    #[test]
    fn svg_has_every_series() {
        let c = Chart {
            title: "loss <train>".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            series: vec![
                Series {
                    name: "train".into(),
                    points: vec![(1.0, 3.0), (2.0, 2.5), (3.0, f64::NAN)],
                    style: Style::Line,
                },
                Series {
                    name: "eval".into(),
                    points: vec![(2.0, 2.7)],
                    style: Style::Points,
                },
            ],
        };
        let svg = c.to_svg();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("loss &lt;train&gt;"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        // The point and the two legend marks.
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(!svg.contains("NaN"));
    }
}
