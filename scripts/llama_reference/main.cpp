// llama_reference: llama.cpp's greedy continuations of a list of prompts, with the top logits at
// every step, as JSON (the fixture hearth's llamacpp_agreement test compares against).
//
// Usage: llama_reference --model M.gguf --prompts PROMPTS.json --out OUT.json
//                        [--steps 64] [--top 5] [--threads 2] [--package NAME==VERSION]
//                        [--model-sha256 HEX]
//
// PROMPTS.json is {"prompts": ["text", ...]}. Each prompt is tokenized as llama.cpp does by
// default for the model (add_special: BOS/EOS as the GGUF metadata says) with special-token texts
// parsed (so a chat template rendered as text becomes its control tokens), evaluated from an empty
// KV cache, then extended greedily for --steps tokens whatever they are (an end-of-generation
// token does not stop it: the comparison is numerical). Greedy = the highest logit, the lower id
// on a tie. Then, as a measure of llama.cpp's own numerical noise, the same tokens go through in
// one batch and the logits are compared ("batched": top-1 agreement and the largest difference at
// the recorded top logits). Only llama.h's public API is used.

#include "llama.h"
#include "ggml.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

using json = nlohmann::ordered_json;

namespace {

struct Args {
    std::string model;
    std::string prompts;
    std::string out;
    std::string package = "unknown";
    std::string model_sha256 = "unknown";
    int steps = 64;
    int top = 5;
    int threads = 2;
};

[[noreturn]] void usage(const std::string & why) {
    std::fprintf(stderr,
                 "llama_reference: %s\n"
                 "usage: llama_reference --model M.gguf --prompts PROMPTS.json --out OUT.json "
                 "[--steps N] [--top K] [--threads T] [--package NAME==VERSION] "
                 "[--model-sha256 HEX]\n",
                 why.c_str());
    std::exit(2);
}

int positive_int(const std::string & flag, const std::string & value) {
    try {
        size_t used = 0;
        int v = std::stoi(value, &used);
        if (used == value.size() && v > 0) {
            return v;
        }
    } catch (const std::exception &) {
    }
    usage(flag + " wants a positive integer, got '" + value + "'");
}

Args parse_args(int argc, char ** argv) {
    Args a;
    for (int i = 1; i < argc; i += 2) {
        std::string flag = argv[i];
        if (i + 1 >= argc) {
            usage(flag + " needs a value");
        }
        std::string value = argv[i + 1];
        if (flag == "--model") a.model = value;
        else if (flag == "--prompts") a.prompts = value;
        else if (flag == "--out") a.out = value;
        else if (flag == "--package") a.package = value;
        else if (flag == "--model-sha256") a.model_sha256 = value;
        else if (flag == "--steps") a.steps = positive_int(flag, value);
        else if (flag == "--top") a.top = positive_int(flag, value);
        else if (flag == "--threads") a.threads = positive_int(flag, value);
        else usage("unknown flag " + flag);
    }
    if (a.model.empty() || a.prompts.empty() || a.out.empty()) {
        usage("--model, --prompts and --out are required");
    }
    return a;
}

std::vector<std::string> read_prompts(const std::string & path) {
    std::ifstream in(path);
    if (!in) {
        throw std::runtime_error("cannot read " + path);
    }
    json doc = json::parse(in);
    if (!doc.contains("prompts") || !doc["prompts"].is_array() || doc["prompts"].empty()) {
        throw std::runtime_error(path + ": wants a non-empty array \"prompts\"");
    }
    std::vector<std::string> prompts;
    for (const auto & p : doc["prompts"]) {
        if (!p.is_string() || p.get<std::string>().empty()) {
            throw std::runtime_error(path + ": every prompt must be a non-empty string");
        }
        prompts.push_back(p.get<std::string>());
    }
    return prompts;
}

std::vector<llama_token> tokenize(const llama_vocab * vocab, const std::string & text) {
    // llama.cpp's defaults: add_special = true (the vocabulary decides BOS/EOS), and special
    // texts parsed, as llama-cli/llama-server do for a rendered chat prompt.
    const bool add_special = true;
    const bool parse_special = true;
    int n = -llama_tokenize(vocab, text.c_str(), (int32_t) text.size(), nullptr, 0, add_special,
                            parse_special);
    std::vector<llama_token> ids(n);
    if (llama_tokenize(vocab, text.c_str(), (int32_t) text.size(), ids.data(), n, add_special,
                       parse_special) != n) {
        throw std::runtime_error("tokenization failed");
    }
    return ids;
}

std::string detokenize(const llama_vocab * vocab, const std::vector<llama_token> & ids) {
    std::string text(ids.size() * 16 + 16, '\0');
    int n = llama_detokenize(vocab, ids.data(), (int32_t) ids.size(), text.data(),
                             (int32_t) text.size(), false, true);
    if (n < 0) {
        text.resize(-n);
        n = llama_detokenize(vocab, ids.data(), (int32_t) ids.size(), text.data(),
                             (int32_t) text.size(), false, true);
    }
    text.resize(std::max(n, 0));
    return text;
}

// Rounds a logit for the fixture: 1e-4 is far below the differences between implementations.
double rounded(float logit) {
    return std::round((double) logit * 1e4) / 1e4;
}

// The `top` highest logits, highest first, the lower id first on a tie.
std::vector<llama_token> top_ids(const float * logits, int n_vocab, int top) {
    std::vector<llama_token> ids(n_vocab);
    std::iota(ids.begin(), ids.end(), 0);
    std::partial_sort(ids.begin(), ids.begin() + top, ids.end(), [&](llama_token a, llama_token b) {
        return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    ids.resize(top);
    return ids;
}

void decode(llama_context * ctx, std::vector<llama_token> & ids) {
    if (llama_decode(ctx, llama_batch_get_one(ids.data(), (int32_t) ids.size())) != 0) {
        throw std::runtime_error("llama_decode failed");
    }
}

// llama.cpp against itself: the prompt and the continuation (but its last token) in one batch,
// every position's logits, compared with the one-token-at-a-time steps: how far llama.cpp's own
// logits move with the evaluation order, the scale hearth's differences are judged on.
json batched_self_check(llama_context * ctx, int n_vocab, const std::vector<llama_token> & prompt,
                        const std::vector<llama_token> & continuation, const json & steps) {
    llama_memory_clear(llama_get_memory(ctx), true);
    std::vector<llama_token> input = prompt;
    input.insert(input.end(), continuation.begin(), continuation.end() - 1);
    llama_batch batch = llama_batch_init((int32_t) input.size(), 0, 1);
    for (size_t i = 0; i < input.size(); i++) {
        batch.token[i] = input[i];
        batch.pos[i] = (llama_pos) i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = i + 1 >= prompt.size();
    }
    batch.n_tokens = (int32_t) input.size();
    int rc = llama_decode(ctx, batch);
    llama_batch_free(batch);
    if (rc != 0) {
        throw std::runtime_error("llama_decode failed on the batched check");
    }
    double max_diff = 0;
    int top1_agree = 0;
    for (size_t s = 0; s < continuation.size(); s++) {
        const float * logits = llama_get_logits_ith(ctx, (int32_t) (prompt.size() - 1 + s));
        if (logits == nullptr) {
            throw std::runtime_error("no logits on the batched check");
        }
        top1_agree += top_ids(logits, n_vocab, 1)[0] == continuation[s];
        for (const auto & entry : steps[s]["top"]) {
            double diff = std::fabs(logits[entry[0].get<llama_token>()] - entry[1].get<double>());
            max_diff = std::max(max_diff, diff);
        }
    }
    return json{{"top1_agree", top1_agree}, {"max_top_logit_diff", rounded((float) max_diff)}};
}

json run_prompt(llama_context * ctx, const llama_vocab * vocab, const std::string & text,
                const Args & args) {
    llama_memory_clear(llama_get_memory(ctx), true);
    std::vector<llama_token> prompt = tokenize(vocab, text);
    if (prompt.empty()) {
        throw std::runtime_error("prompt tokenizes to nothing: " + text);
    }
    const int n_vocab = llama_vocab_n_tokens(vocab);
    decode(ctx, prompt);
    json steps = json::array();
    std::vector<llama_token> continuation;
    for (int step = 0; step < args.steps; step++) {
        const float * logits = llama_get_logits_ith(ctx, -1);
        if (logits == nullptr) {
            throw std::runtime_error("no logits");
        }
        std::vector<llama_token> top = top_ids(logits, n_vocab, args.top);
        json entries = json::array();
        for (llama_token id : top) {
            entries.push_back(json::array({id, rounded(logits[id])}));
        }
        llama_token chosen = top[0];
        steps.push_back(json{{"token", chosen}, {"top", entries}});
        continuation.push_back(chosen);
        if (step + 1 < args.steps) {
            std::vector<llama_token> next{chosen};
            decode(ctx, next);
        }
    }
    return json{{"text", text},
                {"prompt_tokens", prompt},
                {"continuation", detokenize(vocab, continuation)},
                {"batched", batched_self_check(ctx, n_vocab, prompt, continuation, steps)},
                {"steps", steps}};
}

// One line per step keeps the fixture reviewable and its diffs small.
void write_fixture(const std::string & path, const json & header, const json & prompts) {
    std::ofstream out(path);
    if (!out) {
        throw std::runtime_error("cannot write " + path);
    }
    out << "{\n";
    for (auto it = header.begin(); it != header.end(); ++it) {
        out << "  " << json(it.key()).dump() << ": " << it.value().dump() << ",\n";
    }
    out << "  \"prompts\": [\n";
    for (size_t i = 0; i < prompts.size(); i++) {
        const json & p = prompts[i];
        out << "    {\n";
        out << "      \"text\": " << p["text"].dump() << ",\n";
        out << "      \"prompt_tokens\": " << p["prompt_tokens"].dump() << ",\n";
        out << "      \"continuation\": " << p["continuation"].dump() << ",\n";
        out << "      \"batched\": " << p["batched"].dump() << ",\n";
        out << "      \"steps\": [\n";
        const json & steps = p["steps"];
        for (size_t s = 0; s < steps.size(); s++) {
            out << "        " << steps[s].dump() << (s + 1 < steps.size() ? ",\n" : "\n");
        }
        out << "      ]\n";
        out << "    }" << (i + 1 < prompts.size() ? ",\n" : "\n");
    }
    out << "  ]\n}\n";
}

int run(const Args & args) {
    std::vector<std::string> prompts = read_prompts(args.prompts);

    llama_backend_init();
    llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(args.model.c_str(), mparams);
    if (model == nullptr) {
        throw std::runtime_error("cannot load " + args.model);
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);

    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = 1024;
    cparams.n_batch = 1024;
    cparams.n_ubatch = 1024;
    cparams.n_seq_max = 1;
    cparams.n_threads = args.threads;
    cparams.n_threads_batch = args.threads;
    // An F32 KV cache and no flash attention: the reference keeps full precision where it can,
    // so what differs from hearth is the weights' kernels, not cache rounding.
    cparams.type_k = GGML_TYPE_F32;
    cparams.type_v = GGML_TYPE_F32;
    cparams.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    llama_context * ctx = llama_init_from_model(model, cparams);
    if (ctx == nullptr) {
        throw std::runtime_error("cannot create a context");
    }

    json results = json::array();
    for (const std::string & text : prompts) {
        results.push_back(run_prompt(ctx, vocab, text, args));
        std::fprintf(stderr, "llama_reference: %zu/%zu prompts\n", results.size(), prompts.size());
    }

    const char * slash = std::strrchr(args.model.c_str(), '/');
    json header{
        {"generator", "scripts/llama_reference.sh"},
        {"llama_cpp",
         {{"package", args.package},
          {"ggml_version", ggml_version()},
          {"ggml_commit", ggml_commit()},
          {"system_info", llama_print_system_info()}}},
        {"model", {{"file", slash ? slash + 1 : args.model}, {"sha256", args.model_sha256}}},
        {"settings",
         {{"add_special", true},
          {"parse_special", true},
          {"kv_cache", "f32"},
          {"flash_attn", false},
          {"threads", args.threads},
          {"logits_rounded_to", 1e-4}}},
        {"steps", args.steps},
        {"top", args.top},
    };
    write_fixture(args.out, header, results);

    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}

}  // namespace

int main(int argc, char ** argv) {
    Args args = parse_args(argc, argv);
    try {
        return run(args);
    } catch (const std::exception & e) {
        std::fprintf(stderr, "llama_reference: %s\n", e.what());
        return 1;
    }
}
