// Prints how llama.cpp's pre-tokenizer splitter (unicode_regex_split) cuts each input.
// Usage: pre_splits REGEXES INPUTS, both files with one hex-encoded UTF-8 string per line.
// Output: one line per input, its pieces hex-encoded and separated by spaces.
#include "unicode.h"

#include <fstream>
#include <iostream>
#include <string>
#include <vector>

static std::string from_hex(const std::string & hex) {
    std::string out;
    for (size_t i = 0; i + 1 < hex.size(); i += 2) {
        out += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
    }
    return out;
}

static std::string to_hex(const std::string & bytes) {
    static const char * digits = "0123456789abcdef";
    std::string out;
    for (unsigned char c : bytes) {
        out += digits[c >> 4];
        out += digits[c & 15];
    }
    return out;
}

int main(int argc, char ** argv) {
    if (argc != 3) {
        std::cerr << "usage: pre_splits REGEXES INPUTS\n";
        return 2;
    }
    std::vector<std::string> regexes;
    std::ifstream regex_file(argv[1]);
    for (std::string line; std::getline(regex_file, line);) {
        regexes.push_back(from_hex(line));
    }
    std::ifstream input_file(argv[2]);
    for (std::string line; std::getline(input_file, line);) {
        // llama.cpp never splits empty text: an empty prompt has no text fragment.
        if (!line.empty()) {
            std::string sep;
            for (const auto & piece : unicode_regex_split(from_hex(line), regexes, false)) {
                std::cout << sep << to_hex(piece);
                sep = " ";
            }
        }
        std::cout << "\n";
    }
    return 0;
}
