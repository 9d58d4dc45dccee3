import CFDT
import Machine

/// `StateNode` ⇄ flattened device tree (libfdt). The FDT is what goes on the wire and what
/// `swiftvmm inspect` and `fdtdump` read.
public enum FDTCodec {
    public enum FDTError: Error, CustomStringConvertible {
        case libfdt(String, Int32)
        case tooDeep
        public var description: String {
            switch self {
            case .libfdt(let what, let code):
                let msg = fdt_strerror(code).map { String(cString: $0) } ?? "error \(code)"
                return "device tree \(what): \(msg)"
            case .tooDeep: return "device tree nests too deeply"
            }
        }
    }

    /// Serialises `root` (its name is ignored) as an FDT blob.
    public static func encode(_ root: StateNode) throws(FDTError) -> [UInt8] {
        var capacity = 64 * 1024 + estimate(root) * 2
        while true {
            var buf = [UInt8](repeating: 0, count: capacity)
            let r: Int32 = buf.withUnsafeMutableBytes { p in
                guard let b = p.baseAddress else { return -FDT_ERR_NOSPACE }
                var e = fdt_create(b, Int32(capacity))
                if e == 0 { e = fdt_finish_reservemap(b) }
                if e == 0 { e = write(root, name: "", into: b) }
                if e == 0 { e = fdt_finish(b) }
                return e
            }
            if r == -FDT_ERR_NOSPACE { capacity *= 2; continue }
            guard r == 0 else { throw .libfdt("encode", r) }
            let total = Int(buf.withUnsafeBytes { p in UInt32(bigEndian: p.load(fromByteOffset: 4, as: UInt32.self)) })
            return Array(buf.prefix(total))
        }
    }

    static func estimate(_ n: StateNode) -> Int {
        n.properties.reduce(64) { $0 + $1.0.utf8.count + $1.1.count + 16 } + n.children.reduce(0) { $0 + estimate($1) }
    }

    static func write(_ node: StateNode, name: String, into b: UnsafeMutableRawPointer) -> Int32 {
        var e = fdt_begin_node(b, name)
        guard e == 0 else { return e }
        for (key, value) in node.properties {
            e = value.withUnsafeBytes { fdt_property(b, key, $0.baseAddress, Int32($0.count)) }
            guard e == 0 else { return e }
        }
        for c in node.children {
            e = write(c, name: c.name, into: b)
            guard e == 0 else { return e }
        }
        return fdt_end_node(b)
    }

    /// Parses an FDT blob (untrusted: checked with `fdt_check_full` first).
    public static func decode(_ blob: [UInt8]) throws(FDTError) -> StateNode {
        let r: Result<StateNode, FDTError> = blob.withUnsafeBytes { p in
            guard let b = p.baseAddress, blob.count >= 40 else { return .failure(.libfdt("decode", -FDT_ERR_TRUNCATED)) }
            let c = fdt_check_full(b, blob.count)
            guard c == 0 else { return .failure(.libfdt("check", c)) }
            do { return .success(try read(b, offset: 0, depth: 0)) } catch let e as FDTError { return .failure(e) } catch { return .failure(.tooDeep) }
        }
        return try r.get()
    }

    static func read(_ b: UnsafeRawPointer, offset: Int32, depth: Int) throws(FDTError) -> StateNode {
        guard depth < 16 else { throw .tooDeep }
        var len: Int32 = 0
        let namePtr = fdt_get_name(b, offset, &len)
        var node = StateNode(name: namePtr.map { String(cString: $0) } ?? "")
        var prop = fdt_first_property_offset(b, offset)
        while prop >= 0 {
            var plen: Int32 = 0
            var pname: UnsafePointer<CChar>? = nil
            if let data = fdt_getprop_by_offset(b, prop, &pname, &plen), let pname {
                node.properties.append((String(cString: pname), Array(UnsafeRawBufferPointer(start: data, count: Int(plen)))))
            }
            prop = fdt_next_property_offset(b, prop)
        }
        var child = fdt_first_subnode(b, offset)
        while child >= 0 {
            node.children.append(try read(b, offset: child, depth: depth + 1))
            child = fdt_next_subnode(b, child)
        }
        return node
    }
}
