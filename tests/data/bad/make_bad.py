#!/usr/bin/python3
"""Generates the malformed-ONNX corpus of tests/data/bad/ (issue 7, item 6).

Every file is built from scratch with onnx.helper (a 1x4 @ 4x4 MatMul and friends), a few hundred
bytes each, and is deliberately broken in one way. tests/test_bad_inputs.cpp ([bad]) runs
`kerf compile` on each and asserts the exit code and stderr substring listed in EXPECTED below
(keep the two in step). Run with Debian's python3, which has the onnx package:

    /usr/bin/python3 tests/data/bad/make_bad.py

The checker is deliberately not run: these models are invalid on purpose. Output is deterministic.
"""
import os
import struct

import onnx
from onnx import TensorProto, helper

HERE = os.path.dirname(os.path.abspath(__file__))
OPSET = [helper.make_opsetid("", 17)]

# file -> (exit code, stderr substring); mirrored in tests/test_bad_inputs.cpp.
EXPECTED = {}


def x_in(name="x", shape=(1, 4)):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def y_out(name="y", shape=(1, 4)):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def weight(name="W", dims=(4, 4), raw=None, dtype=TensorProto.FLOAT):
    t = TensorProto()
    t.name = name
    t.data_type = dtype
    t.dims.extend(dims)
    if raw is None:
        n = 1
        for d in dims:
            n *= d
        raw = struct.pack("<%df" % n, *[0.25 * (i % 7) for i in range(n)])
    t.raw_data = raw
    return t


def model(nodes, inputs, outputs, inits=(), opsets=OPSET, name="bad"):
    g = helper.make_graph(nodes, name, list(inputs), list(outputs), initializer=list(inits))
    m = helper.make_model(g, opset_imports=list(opsets), producer_name="make_bad.py")
    m.ir_version = 8
    return m


def valid_tiny():
    return model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [x_in()], [y_out()], [weight()])


def save(fname, m_or_bytes, code, needle):
    data = m_or_bytes if isinstance(m_or_bytes, bytes) else m_or_bytes.SerializeToString()
    assert len(data) < 20 * 1024, fname
    with open(os.path.join(HERE, fname), "wb") as f:
        f.write(data)
    EXPECTED[fname] = (code, needle)


def main():
    # 1. A valid tiny model cut in half: the protobuf parse fails.
    full = valid_tiny().SerializeToString()
    save("truncated.onnx", full[: len(full) // 2], 3, "protobuf parse failed")

    # 2. Wrong initializer dtypes: STRING is a real ONNX type kerf does not handle (unsupported);
    #    99 is no ONNX type at all (bad input).
    save("dtype_string.onnx",
         model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [x_in()], [y_out()],
               [weight(dtype=TensorProto.STRING, raw=b"")]),
         4, "initializer 'W': ONNX element type 8 (STRING) is not supported")
    save("dtype_invalid.onnx",
         model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [x_in()], [y_out()],
               [weight(dtype=99, raw=b"\0" * 64)]),
         3, "initializer 'W': ONNX element type 99 is not a valid ONNX data type")

    # 3. Negative dims: on an initializer and on a graph input.
    save("negative_dim.onnx",
         model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [x_in()], [y_out()],
               [weight(dims=(-4, 4), raw=b"\0" * 64)]),
         3, "initializer 'W': negative dimension -4")
    save("negative_dim_input.onnx",
         model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [x_in(shape=(1, -4))], [y_out()],
               [weight()]),
         3, "negative_dim_input.onnx: graph input: value 'x' has a negative dimension")

    # 4. Huge dims in a file of a few hundred bytes: an error, never an allocation.
    #    2^20 x 2^20 = 2^40 float32 elements (4 TiB) claimed with 64 bytes of raw_data ...
    save("huge_dim.onnx",
         model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [x_in()], [y_out()],
               [weight(dims=(1 << 20, 1 << 20), raw=b"\0" * 64)]),
         3, "initializer 'W': raw_data has 64 bytes, shape and dtype need 4398046511104")
    #    ... and 2^40 x 2^40 elements, whose product overflows the element limit.
    save("huge_dim_overflow.onnx",
         model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [x_in()], [y_out()],
               [weight(dims=(1 << 40, 1 << 40), raw=b"\0" * 64)]),
         3, "initializer 'W': shape has too many elements")
    #    ... and a 2^40-element tensor with no data at all (float_data empty).
    nodata = weight(dims=(1 << 20, 1 << 20), raw=b"")
    nodata.ClearField("raw_data")
    save("huge_dim_nodata.onnx",
         model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [x_in()], [y_out()], [nodata]),
         3, "initializer 'W': has 0 values, shape needs 1099511627776")

    # 5. A node input that is neither an initializer, a graph input nor produced by a node.
    save("missing_initializer.onnx",
         model([helper.make_node("MatMul", ["x", "W_missing"], ["y"], name="mm")], [x_in()], [y_out()]),
         3, "input 1 'W_missing' is not defined before it")

    # 6. A cycle: a = Add(x, b); b = Add(a, x).
    save("cycle.onnx",
         model([helper.make_node("Add", ["x", "b"], ["a"], name="add_a"),
                helper.make_node("Add", ["a", "x"], ["b"], name="add_b")],
               [x_in()], [y_out("b")]),
         3, "input 1 'b' is not defined before it (not a graph input, initializer or earlier output); it is produced by the later node 'add_b' (the graph has a cycle")

    # 7. Two nodes writing the same output name.
    save("duplicate_output.onnx",
         model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm1"),
                helper.make_node("MatMul", ["x", "W"], ["y"], name="mm2")],
               [x_in()], [y_out()], [weight()]),
         3, "value 'y' is defined twice (again by node 'mm2')")

    # 8. An op from a domain kerf does not know.
    save("unknown_domain.onnx",
         model([helper.make_node("Frobnicate", ["x"], ["y"], name="evil_node", domain="com.example.evil")],
               [x_in()], [y_out()],
               opsets=OPSET + [helper.make_opsetid("com.example.evil", 1)]),
         4, "com.example.evil::Frobnicate (1): evil_node")

    # 9. Control flow: If, Loop, Scan (each with a real subgraph).
    then_g = helper.make_graph([helper.make_node("Identity", ["x"], ["t_out"])], "then", [], [y_out("t_out")])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e_out"])], "else", [], [y_out("e_out")])
    save("control_if.onnx",
         model([helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_g, else_branch=else_g)],
               [helper.make_tensor_value_info("cond", TensorProto.BOOL, []), x_in()], [y_out()]),
         4, "If (1): branch")
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["v_in", "x"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("iter", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []), x_in("v_in")],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), y_out("v_out")])
    save("control_loop.onnx",
         model([helper.make_node("Loop", ["trip", "", "x"], ["y"], name="repeat", body=body)],
               [helper.make_tensor_value_info("trip", TensorProto.INT64, []), x_in()], [y_out()]),
         4, "Loop (1): repeat")
    scan_body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "e"], ["s_out"]), helper.make_node("Identity", ["s_out"], ["e_out"])],
        "scan_body",
        [x_in("s_in", (4,)), x_in("e", (4,))],
        [y_out("s_out", (4,)), y_out("e_out", (4,))])
    save("control_scan.onnx",
         model([helper.make_node("Scan", ["s0", "xs"], ["s_final", "ys"], name="cumsum", body=scan_body,
                                 num_scan_inputs=1)],
               [x_in("s0", (4,)), x_in("xs", (3, 4))], [y_out("s_final", (4,)), y_out("ys", (3, 4))]),
         4, "Scan (1): cumsum")

    # 10. raw_data shorter than the declared shape (16 floats need 64 bytes, 8 given).
    save("raw_data_short.onnx",
         model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [x_in()], [y_out()],
               [weight(raw=b"\0" * 8)]),
         3, "initializer 'W': raw_data has 8 bytes, shape and dtype need 64")

    # 11. External data whose location escapes the model's folder.
    def external(location, **kv):
        t = weight(raw=b"")
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for k, v in [("location", location)] + sorted(kv.items()):
            e = t.external_data.add()
            e.key, e.value = k, v
        return t

    save("external_escape.onnx",
         model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [x_in()], [y_out()],
               [external("../../etc/passwd")]),
         3, "external data location '../../etc/passwd' escapes the model's folder")
    save("external_absolute.onnx",
         model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [x_in()], [y_out()],
               [external("/etc/passwd")]),
         3, "external data location '/etc/passwd' escapes the model's folder")
    # 12. External data offset / length that are not numbers (std::stoull used to throw here).
    save("external_bad_offset.onnx",
         model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [x_in()], [y_out()],
               [external("w.bin", offset="lots")]),
         3, "external data offset 'lots' is not a number")
    save("external_bad_length.onnx",
         model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [x_in()], [y_out()],
               [external("w.bin", length="99999999999999999999999")]),
         3, "external data length '99999999999999999999999' is not a number")

    # 12b. External data in a file that is not there (I/O error); the [bad] tests also copy this model
    #      beside a symlink of that name pointing outside the folder (bad input).
    save("external_missing.onnx",
         model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [x_in()], [y_out()],
               [external("weights.bin", length="64")]),
         5, "cannot open external data file")

    # 13. Limits (exit 7, resource limit): a rank-9 initializer (kerf's limit is 8) and a graph input
    #     of rank 9; and If subgraphs nested 70 deep, past the parser's recursion limit (64 messages),
    #     which is a parse failure (bad input), never a stack overflow.
    save("rank9.onnx",
         model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [x_in()], [y_out()],
               [weight(dims=(1,) * 7 + (4, 4))]),
         7, "initializer 'W': rank 9 is over kerf's limit of 8")
    save("rank9_input.onnx",
         model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [x_in(shape=(1,) * 8 + (4,))], [y_out()],
               [weight()]),
         7, "graph input: value 'x': rank 9 is over kerf's limit of 8")
    deep = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "leaf", [], [y_out()])
    for depth in range(70):
        deep = helper.make_graph([helper.make_node("If", ["cond"], ["y"], name="if%d" % depth, then_branch=deep)],
                                 "level%d" % depth, [], [y_out()])
    save("deep_nesting.onnx",
         model(list(deep.node), [helper.make_tensor_value_info("cond", TensorProto.BOOL, []), x_in()], [y_out()]),
         3, "not a valid ONNX ModelProto (protobuf parse failed)")

    for f, (code, needle) in sorted(EXPECTED.items()):
        print("%-28s %d  %s" % (f, code, needle))


if __name__ == "__main__":
    main()
