import Foundation

/// Human output for migration progress and results.
enum Progress {
    static func num(_ v: Any?) -> Double {
        if let d = v as? Double { return d }
        if let i = v as? Int { return Double(i) }
        if let n = v as? NSNumber { return n.doubleValue }
        return 0
    }

    /// `pre-copy  42% [########        ] 1530 MB/s  12000 dirty pages/s  round 3  downtime ~4.1 ms`
    static func line(_ p: [String: Any]) -> String {
        let phase = p["phase"] as? String ?? "?"
        let pct = num(p["percent"])
        let width = 20
        let filled = min(width, Int(pct / 100 * Double(width)))
        let bar = String(repeating: "#", count: filled) + String(repeating: " ", count: width - filled)
        var s = String(format: "%-13@ %3.0f%% [%@] %7.1f MB/s  %8.0f dirty pages/s  round %d  downtime ~%.1f ms",
                       phase as NSString, pct, bar as NSString, num(p["rate_MBps"]), num(p["dirty_pages_per_s"]),
                       Int(num(p["round"])), num(p["predicted_downtime_ms"]))
        let t = Int(num(p["throttle_percent"]))
        if t > 0 { s += "  throttle \(t)%" }
        if num(p["disk_bytes"]) > 0 {
            s += String(format: "  disk %.1f/%.1f MB, %.1f MB sent, %d dirty blocks", num(p["disk_covered_bytes"]) / 1e6,
                        num(p["disk_allocated_bytes"]) / 1e6, num(p["disk_bytes_on_wire"]) / 1e6, Int(num(p["disk_dirty_blocks"])))
        }
        return s
    }

    static func summary(_ r: [String: Any]) -> String {
        let rounds = (r["rounds"] as? [Any])?.count ?? 0
        let mb = num(r["bytes_on_wire"]) / 1e6
        var s = String(format: "migrated: total %.1f ms, downtime %.2f ms, setup %.1f ms, %d rounds, %.1f MB on the wire (compression %.1fx), %d pages sent, %d zero pages",
                       num(r["total_ms"]), num(r["downtime_ms"]), num(r["setup_ms"]), rounds, mb, num(r["compression_ratio"]),
                       Int(num(r["pages_sent"])), Int(num(r["zero_pages"])))
        let c = Int(num(r["connections"]))
        if c > 1 { s += ", over \(c) connections" }
        let t = Int(num(r["max_throttle_percent"]))
        if t > 0 { s += ", throttled up to \(t)%" }
        if num(r["disk_bytes"]) > 0 {
            s += String(format: "; disk: %.1f MB on the wire for %.1f MB allocated of %.1f MB, %d blocks in the pause",
                        num(r["disk_bytes_on_wire"]) / 1e6, num(r["disk_allocated_bytes"]) / 1e6, num(r["disk_bytes"]) / 1e6,
                        Int(num(r["disk_final_blocks"])))
        }
        if let w = r["downtime_warning"] as? String { s += "; " + w }
        return s
    }
}
