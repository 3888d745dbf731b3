#!/usr/bin/env python3
"""Writes ../llama-pre-splits.json: llama.cpp's BPE pre-tokenizers as llama.cpp itself runs them.

Reads src/llama-vocab.cpp of a llama.cpp tree for every `tokenizer.ggml.pre` name (its
LLAMA_VOCAB_PRE_TYPE_* and the flags set with it) and every type's regex list, builds
pre_splits.cpp against llama.cpp's src/unicode.cpp, and records how each group of types with
identical regexes splits a set of inputs (llama.cpp's tokenizer test inputs plus the ones below).

Usage: pre_splits.py LLAMA_CPP_DIR [OUT]   (LLAMA_CPP_DIR from llama_cpp_source.sh)
"""
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SEPARATOR = '\n__ggml_vocab_test__\n'
VECTOR_FILES = ['gpt-2', 'qwen35', 'gemma-4']
EXTRA_INPUTS = [
    "DON'T WE'LL THEY'RE I'M YOU'VE SHE'D IT'S", "don't we'll they're i'm you've she'd it's",
    "'s 're 'T", "HelloWorld iPhone XSMax camelCaseWord URLParser ÉCOLE école Straße ǅemal",
    "中文abc123中文 日本語のテキスト カタカナ 한국어 텍스트", "〇一二三 㐀㐁 𠀀𠀁 豈更",
    "1234567890 12,345.67 0.5 1e10 ١٢٣٤٥ ⅣⅫ ½ ²³", "$100 +5 <a>=b ^~|` 50% #tag @user",
    "नमस्ते दुनिया। हिन्दी", "مرحبا بالعالم، كيف حالك؟ ۔", "สวัสดีครับ ภาษาไทย", "Привет, мир! ЁЖИК",
    "a\u00a0b\u2003c\u3000d\u200be\ufeff", "line1\r\nline2\rline3\n\n\nline4\t\ttab",
    "  leading and trailing  ", "fn main() {\n    let x = vec![1, 2, 3];\n    println!(\"{x:?}\");\n}\n",
    "https://example.com/path?q=1&r=two#frag", "a.b,c!d?e…f。g，h、i",
    "(parens) [brackets] {braces} <angles>", "emoji 👍🏽 👨‍👩‍👧 🇫🇷 ok", "e\u0301 a\u0300\u0301 n\u0303o",
    "Ελληνικά κείμενα ΑΒΓ", "x²+y²=z² ∑∫√∞ ≠ ≤", "___init___ --flag ==>", "The capital of France is",
    "'ſ 'K 'İ x'S", " " * 40 + "x" + " " * 9 + "y\n" + " " * 600 + "z",
    "中文\u3000한국어\u2003日本\u3000語", "。\u3000、\u3000！ x\u3000y", "a\u2028b\u2029c\u0085d\u1680e\u202ff\u205fg",
    "<sentinel:12> IMGIMGABZ text", "  \n  \n", "\t \t", "'''", "it's 'quoted' text'",
]


def c_literals(text):
    """The C string literals in `text`, unescaped, skipping // comments."""
    escapes = {'n': '\n', 'r': '\r', 't': '\t', '\\': '\\', '"': '"', "'": "'"}
    out = []
    for line in text.split('\n'):
        i, current = 0, None
        while i < len(line):
            ch = line[i]
            if current is None:
                if line.startswith('//', i):
                    break
                if ch == '"':
                    current = []
            elif ch == '\\':
                current.append(escapes[line[i + 1]])
                i += 1
            elif ch == '"':
                out.append(''.join(current))
                current = None
            else:
                current.append(ch)
            i += 1
    return out


def read_tables(vocab_cpp):
    src = open(vocab_cpp, encoding='utf-8').read()
    start = src.index('switch (vocab.get_pre_type()) {')
    body = src[start:src.index('std::vector<std::string> regex_exprs;', start)]
    types = {}
    for block in re.split(r'\n\s*break;', body):
        cases = re.findall(r'case LLAMA_VOCAB_PRE_TYPE_(\w+):', block)
        if 'default:' in block:
            cases.append('DEFAULT')
        found = re.search(r'regex_exprs = \{(.*?)\n\s*\};', block, re.S)
        if found:
            for case in cases:
                types[case] = {'regexes': c_literals(found.group(1)),
                               'byte_encode': 'byte_encode = false' not in block}
    start = src.index('if (tokenizer_pre.empty())')
    body = src[start:src.index('} else if (type == LLAMA_VOCAB_TYPE_SPM)', start)]
    names = {}
    for block in re.split(r'\} else if \(', body)[1:]:
        pre_type = re.search(r'pre_type = LLAMA_VOCAB_PRE_TYPE_(\w+);', block).group(1)
        for name in re.findall(r'tokenizer_pre == "([^"]+)"', block):
            names[name] = {
                'type': pre_type,
                'ignore_merges': 'ignore_merges = true' in block,
                'add_bos': 'add_bos = true' in block,
                'escape_whitespaces': 'escape_whitespaces = true' in block,
                'clean_spaces': 'clean_spaces = false' not in block,
                'add_sep': 'add_sep = true' in block,
            }
    unknown = {flags['type'] for flags in names.values()} - set(types)
    assert not unknown, unknown
    return names, types


def main():
    llama_cpp = sys.argv[1]
    out_path = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, '..', 'llama-pre-splits.json')
    names, types = read_tables(os.path.join(llama_cpp, 'src', 'llama-vocab.cpp'))
    inputs = []
    for name in VECTOR_FILES:
        path = os.path.join(llama_cpp, 'models', f'ggml-vocab-{name}.gguf.inp')
        pieces = open(path, encoding='utf-8').read().split(SEPARATOR)
        inputs += pieces[:-1] if pieces[-1] == '' else pieces
    inputs = list(dict.fromkeys(inputs + EXTRA_INPUTS))

    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, 'pre_splits')
        src = os.path.join(llama_cpp, 'src')
        subprocess.run(['g++', '-O1', '-std=c++17', '-I', src, os.path.join(HERE, 'pre_splits.cpp'),
                        os.path.join(src, 'unicode.cpp'), os.path.join(src, 'unicode-data.cpp'),
                        '-o', exe], check=True)
        inputs_file = os.path.join(tmp, 'inputs')
        with open(inputs_file, 'w') as f:
            f.writelines(s.encode().hex() + '\n' for s in inputs)
        groups = {}
        for pre_type, entry in types.items():
            groups.setdefault(json.dumps([entry['regexes'], entry['byte_encode']]), []).append(pre_type)
        splits = {}
        for key, members in groups.items():
            regex_file = os.path.join(tmp, 'regexes')
            with open(regex_file, 'w') as f:
                f.writelines(r.encode().hex() + '\n' for r in json.loads(key)[0])
            lines = subprocess.run([exe, regex_file, inputs_file], check=True, capture_output=True,
                                   text=True).stdout.split('\n')[:-1]
            rows = [[bytes.fromhex(p).decode() for p in line.split()] for line in lines]
            assert len(rows) == len(inputs)
            assert all(''.join(row) == text for row, text in zip(rows, inputs))
            splits[members[0]] = rows
            for pre_type in members:
                types[pre_type]['splits'] = members[0]

    dump = lambda value: json.dumps(value, ensure_ascii=False)
    def block(items, indent='  '):
        return ',\n'.join(f'{indent}{dump(k)}: {v}' for k, v in items)
    with open(out_path, 'w', encoding='utf-8') as f:
        f.write('{\n "source": %s,\n' % dump(f'llama.cpp as shipped in {os.path.basename(os.path.dirname(llama_cpp.rstrip("/")))}'))
        f.write(' "names": {\n%s\n },\n' % block((k, dump(v)) for k, v in sorted(names.items())))
        f.write(' "types": {\n%s\n },\n' % block((k, dump(v)) for k, v in sorted(types.items())))
        f.write(' "inputs": [\n%s\n ],\n' % ',\n'.join('  ' + dump(s) for s in inputs))
        f.write(' "splits": {\n%s\n }\n}\n' % ',\n'.join(
            f'  {dump(k)}: [\n' + ',\n'.join('   ' + dump(row) for row in rows) + '\n  ]'
            for k, rows in sorted(splits.items())))
    print(f'{len(names)} names, {len(types)} types, {len(splits)} groups, {len(inputs)} inputs')


if __name__ == '__main__':
    main()
