import Foundation
import Machine

extension SnapshotFile {
    /// True when `path` starts with the snapshot magic (so `inspect` never reads a large
    /// snapshot whole to find out what it is).
    public static func looksLikeSnapshot(_ path: String) -> Bool {
        guard let h = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? h.close() }
        let head = (try? h.read(upToCount: SnapshotHeader.magic.count)) ?? Data()
        return Array(head) == SnapshotHeader.magic
    }

    /// A human summary: format, guest, memory regions and what they take on disk.
    public var summary: String {
        let d = description
        let saved = Date(timeIntervalSince1970: Double(header.savedAtNanos) / 1e9)
        var lines = [
            "swiftvmm snapshot, format version \(SnapshotHeader.version)",
            "  guest       \(d.name) (uuid \(d.uuid)), saved by swiftvmm \(d.vmmVersion) at \(ISO8601DateFormatter().string(from: saved))",
            "  memory      \(ByteSize.format(d.memorySize)), \(d.cpus) vCPU\(d.cpus == 1 ? "" : "s"), CPU model \(d.cpuModel), TSC \(TSCRate.format(d.tscKHz))",
            "  state       \(header.stateLength) bytes (FDT), description \(header.descriptionLength) bytes",
        ]
        for (i, r) in header.regions.enumerated() {
            lines.append(String(format: "  region %d    guest 0x%llx–0x%llx at file offset 0x%llx, %@ of data",
                                i, r.guestAddress, r.guestAddress + r.size, r.fileOffset, ByteSize.format(r.dataBytes) as NSString))
        }
        for dev in d.devices {
            lines.append("  device      \(dev.stateName) (\(dev.kind.rawValue))\(dev.volume.map { ", volume '\($0)'" } ?? "")")
        }
        lines.append("  file        \(ByteSize.format(apparentBytes)) apparent, \(ByteSize.format(allocatedBytes)) allocated on disk")
        return lines.joined(separator: "\n") + "\n"
    }
}
