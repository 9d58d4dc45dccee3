import Foundation
/// A decoder for the subset of AML swiftvmm's DSDT uses, written from the ACPI specification
/// independently of the encoder: each device becomes one line, "\PATH.DEV _HID=… _UID=… _CRS=[…]".
enum AMLDecoder {
    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ d: String) { description = d }
    }

    static func decode(_ aml: [UInt8]) throws -> [String] {
        var lines: [String] = []
        var reader = Reader(bytes: aml, at: 0)
        try terms(&reader, end: aml.count, scope: "", into: &lines, device: nil)
        return lines
    }

    struct Reader {
        let bytes: [UInt8]
        var at: Int
        mutating func byte() throws -> UInt8 {
            guard at < bytes.count else { throw Failure("AML ends early at \(at)") }
            defer { at += 1 }
            return bytes[at]
        }
        mutating func le(_ n: Int) throws -> UInt64 {
            var v: UInt64 = 0
            for i in 0 ..< n { v |= UInt64(try byte()) << (8 * UInt64(i)) }
            return v
        }
        /// PkgLength; returns the end offset of the package it starts.
        mutating func packageEnd() throws -> Int {
            let start = at
            let lead = try byte()
            let extra = Int(lead >> 6)
            var length = extra == 0 ? Int(lead & 0x3f) : Int(lead & 0x0f)
            for i in 0 ..< extra { length |= Int(try byte()) << (4 + 8 * i) }
            return start + length
        }
        mutating func name() throws -> String {
            var prefix = ""
            while let b = bytes[safe: at], b == 0x5c || b == 0x5e { prefix += b == 0x5c ? "\\" : "^"; at += 1 }
            let count: Int
            switch try byte() {
            case 0x2e: count = 2
            case 0x2f: count = Int(try byte())
            case 0x00: return prefix
            default: at -= 1; count = 1
            }
            var segs: [String] = []
            for _ in 0 ..< count {
                segs.append(String(decoding: try (0 ..< 4).map { _ in try byte() }, as: UTF8.self))
            }
            return prefix + segs.joined(separator: ".")
        }
    }

    static func terms(_ r: inout Reader, end: Int, scope: String, into lines: inout [String], device: UnsafeMutablePointer<[String]>?) throws {
        while r.at < end {
            switch try r.byte() {
            case 0x10:
                let e = try r.packageEnd()
                let n = try r.name()
                try terms(&r, end: e, scope: n.hasPrefix("\\") ? n : scope + "." + n, into: &lines, device: nil)
            case 0x5b:
                guard try r.byte() == 0x82 else { throw Failure("unexpected extended opcode at \(r.at - 1)") }
                let e = try r.packageEnd()
                let n = try r.name()
                var properties: [String] = []
                try terms(&r, end: e, scope: scope + "." + n, into: &lines, device: &properties)
                lines.append(([scope + "." + n] + properties).joined(separator: " "))
            case 0x08:
                let n = try r.name()
                let value = try data(&r, eisa: n == "_HID")
                device?.pointee.append("\(n)=\(value)")
            case let op:
                throw Failure("unexpected opcode 0x\(String(op, radix: 16)) at \(r.at - 1)")
            }
        }
        guard r.at == end else { throw Failure("term list overruns its package (\(r.at) > \(end))") }
    }

    static func data(_ r: inout Reader, eisa: Bool) throws -> String {
        let op = try r.byte()
        let width = [0x0a: 1, 0x0b: 2, 0x0c: 4, 0x0e: 8][Int(op)]
        switch op {
        case 0x00, 0x01: return "\(op)"
        case 0x0a, 0x0b, 0x0c, 0x0e:
            let v = try r.le(width ?? 0)
            return eisa && op == 0x0c ? "EISA:" + eisaID(UInt32(v)) : "\(v)"
        case 0x0d:
            var s: [UInt8] = []
            while true { let b = try r.byte(); if b == 0 { break }; s.append(b) }
            return "\"" + String(decoding: s, as: UTF8.self) + "\""
        case 0x11:
            let e = try r.packageEnd()
            let size = Int(try data(&r, eisa: false)) ?? -1
            guard e - r.at == size else { throw Failure("buffer size \(size) but \(e - r.at) bytes") }
            defer { r.at = e }
            return "[" + (try resources(Array(r.bytes[r.at ..< e]))).joined(separator: ", ") + "]"
        default: throw Failure("unexpected data opcode 0x\(String(op, radix: 16))")
        }
    }

    static func resources(_ b: [UInt8]) throws -> [String] {
        var out: [String] = []
        var r = Reader(bytes: b, at: 0)
        while true {
            let tag = try r.byte()
            switch tag {
            case 0x47:
                let decode = try r.byte(), min = try r.le(2), max = try r.le(2), _ = try r.byte(), len = try r.byte()
                guard decode == 1, min == max else { throw Failure("IO descriptor not fixed 16-bit") }
                out.append("IO 0x\(String(min, radix: 16))/\(len)")
            case 0x86:
                guard try r.le(2) == 9 else { throw Failure("Memory32Fixed length") }
                let rw = try r.byte(), base = try r.le(4), len = try r.le(4)
                out.append("MEM 0x\(String(base, radix: 16))/0x\(String(len, radix: 16)) \(rw == 1 ? "rw" : "ro")")
            case 0x89:
                let len = Int(try r.le(2)), flags = try r.byte(), count = Int(try r.byte())
                guard len == 2 + 4 * count, count == 1, flags & 1 == 1 else { throw Failure("Interrupt descriptor") }
                let gsi = try r.le(4)
                out.append("IRQ \(gsi) \(flags & 2 != 0 ? "edge" : "level") \(flags & 4 != 0 ? "low" : "high")")
            case 0x79:
                _ = try r.byte()
                guard r.at == b.count else { throw Failure("bytes after the end tag") }
                return out
            default: throw Failure("unexpected resource tag 0x\(String(tag, radix: 16))")
            }
        }
    }

    static func eisaID(_ v: UInt32) -> String {
        let id = v.byteSwapped
        let letters = [(id >> 26) & 0x1f, (id >> 21) & 0x1f, (id >> 16) & 0x1f].map { Character(UnicodeScalar(UInt8($0) + 0x40)) }
        return String(letters) + String(format: "%04X", id & 0xffff)
    }
}

extension Array {
    subscript(safe i: Int) -> Element? { indices.contains(i) ? self[i] : nil }
}
