import Testing
@testable import Machine
@testable import Migration

@Suite("FDT codec: StateNode ⇄ flattened device tree")
struct FDTTests {
    /// A tree with the awkward cases: a 1 MiB property, empty properties, many children, nesting.
    static func sampleTree() -> StateNode {
        var g = TestRandom(seed: 0xfd7)
        var root = StateNode(name: "")
        root.set("version", UInt32(1))
        root.set("empty", bytes: [])
        root.set("big", bytes: g.bytes(1 << 20))
        root.set("name", string: "guest-1")
        var vcpus = StateNode(name: "vcpus")
        for i in 0..<300 {
            var c = StateNode(name: "vcpu@\(i)")
            c.set("id", UInt32(i))
            c.set("regs", bytes: g.bytes(i % 37))
            if i % 3 == 0 { c.set("flag", bytes: []) }
            vcpus.children.append(c)
        }
        root.children.append(vcpus)
        var deep = StateNode(name: "level0")
        for level in (1..<8).reversed() {
            var outer = StateNode(name: "level\(level)", properties: [("depth", [UInt8(level)])])
            outer.children = [deep]
            deep = outer
        }
        root.children.append(deep)
        root.children.append(StateNode(name: "no-properties"))
        return root
    }

    /// `depth` nested children under the root.
    static func chain(_ depth: Int) -> StateNode {
        var node = StateNode(name: "leaf", properties: [("x", [1])])
        for i in 0..<(depth - 1) { node = StateNode(name: "n\(i)", children: [node]) }
        return StateNode(name: "", children: [node])
    }

    func expectRejected(_ blob: [UInt8], _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            _ = try FDTCodec.decode(blob)
            Issue.record("\(what) was accepted", sourceLocation: sourceLocation)
        } catch {
            #expect(error.description.hasPrefix("device tree"), sourceLocation: sourceLocation)
        }
    }

    @Test("encode then decode gives the same tree: big, empty, many and nested")
    func roundTrip() throws {
        let tree = Self.sampleTree()
        let blob = try FDTCodec.encode(tree)
        #expect(Array(blob.prefix(4)) == [0xd0, 0x0d, 0xfe, 0xed])          // FDT magic
        #expect(Array(blob[4..<8]) == be32(UInt32(blob.count)))            // totalsize, trimmed
        let back = try FDTCodec.decode(blob)
        #expect(back == tree)
        #expect(back.child("vcpus")?.children.count == 300)
        #expect(try back.bytes("empty") == [])
        #expect(try back.child("vcpus")?.child("vcpu@299")?.integer("id", as: UInt32.self) == 299)
        #expect(try FDTCodec.encode(back) == blob)                          // deterministic
    }

    @Test("the root's name is not encoded; an empty root round-trips")
    func rootName() throws {
        let named = StateNode(name: "ignored", properties: [("a", [1])])
        let back = try FDTCodec.decode(try FDTCodec.encode(named))
        #expect(back.name == "")
        #expect(back.properties.count == 1)
        #expect(try FDTCodec.decode(try FDTCodec.encode(StateNode(name: ""))) == StateNode(name: ""))
    }

    @Test("nesting: 15 levels decode, 16 are refused as too deep")
    func depth() throws {
        let ok = try FDTCodec.decode(try FDTCodec.encode(Self.chain(15)))
        #expect(ok == Self.chain(15))
        do {
            _ = try FDTCodec.decode(try FDTCodec.encode(Self.chain(16)))
            Issue.record("16 levels accepted")
        } catch {
            guard case .tooDeep = error else { Issue.record("wrong error \(error)"); return }
            #expect(error.description == "device tree nests too deeply")
        }
    }

    @Test("garbage, short and truncated blobs are refused without crashing")
    func garbage() throws {
        expectRejected([], "an empty blob")
        expectRejected([UInt8](repeating: 0, count: 39), "39 zero bytes")
        expectRejected([UInt8](repeating: 0, count: 4096), "4 KiB of zeros")
        expectRejected(Array("not a device tree at all, just some text padding it out".utf8), "text")
        let blob = try FDTCodec.encode(Self.chain(3))
        for length in [blob.count - 1, blob.count - 4, blob.count / 2, 41, 40] {
            expectRejected(Array(blob.prefix(length)), "a blob truncated to \(length) of \(blob.count) bytes")
        }
    }

    @Test("a flipped byte in the header or structure is caught by fdt_check_full")
    func flippedByte() throws {
        var node = StateNode(name: "")
        node.set("p", UInt32(5))
        node.children = [StateNode(name: "child", properties: [("q", [1, 2, 3])])]
        let blob = try FDTCodec.encode(node)
        let structOffset = Int(blob[8..<12].reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
        for (offset, what) in [(0, "magic"), (4, "totalsize"), (8, "off_dt_struct"), (12, "off_dt_strings"),
                               (24, "last_comp_version"), (structOffset + 3, "first structure token")] {
            for mask in [0x01, 0x80] as [UInt8] {
                var bad = blob
                bad[offset] ^= mask
                expectRejected(bad, "a flip of bit 0x\(String(mask, radix: 16)) in \(what)")
            }
        }
        // Every single-bit flip anywhere either is refused or decodes to some tree — never a crash.
        var refused = 0
        for offset in blob.indices {
            for bit in 0..<8 {
                var bad = blob
                bad[offset] ^= 1 << UInt8(bit)
                if (try? FDTCodec.decode(bad)) == nil { refused += 1 }
            }
        }
        #expect(refused > blob.count)
    }

    @Test("random bytes and random mutations of a valid tree never crash the decoder")
    func fuzz() throws {
        var g = TestRandom(seed: 0xf022)
        for _ in 0..<2000 {
            _ = try? FDTCodec.decode(g.bytes(Int.random(in: 0..<512, using: &g)))
        }
        let valid = try FDTCodec.encode(Self.chain(4))
        var survivors = 0
        for _ in 0..<5000 {
            var blob = valid
            for _ in 0..<Int.random(in: 1...6, using: &g) {
                blob[Int.random(in: 8..<blob.count, using: &g)] = UInt8.random(in: 0...255, using: &g)
            }
            if Bool.random(using: &g) { blob = Array(blob.prefix(Int.random(in: 40...blob.count, using: &g))) }
            if (try? FDTCodec.decode(blob)) != nil { survivors += 1 }
        }
        #expect(survivors < 5000)
        // A valid header in front of random bytes (so the check runs past the magic).
        for _ in 0..<2000 {
            var blob = Array(valid.prefix(40))
            blob += g.bytes(valid.count - 40)
            _ = try? FDTCodec.decode(blob)
        }
    }
}
