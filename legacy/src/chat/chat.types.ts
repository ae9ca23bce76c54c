// GraphQL object and input types of the chat API (code-first). Inputs are validated by the global
// ValidationPipe like REST bodies; a violation is a BAD_USER_INPUT error.
import { Field, GraphQLISODateTime, ID, InputType, Int, ObjectType } from '@nestjs/graphql';
import { Transform } from 'class-transformer';
import { ArrayMaxSize, ArrayMinSize, IsArray, IsOptional, IsString, IsUUID, Length, Matches } from 'class-validator';

const trim = ({ value }: { value: unknown }) => (typeof value === 'string' ? value.trim() : value);

@ObjectType()
export class User {
  @Field(() => ID) id: string;
  @Field() displayName: string;
  @Field(() => String, { nullable: true }) avatarUrl: string | null;
}

@ObjectType()
export class Message {
  @Field(() => ID) id: string;
  @Field(() => ID) chatId: string;
  @Field(() => ID) senderId: string;
  @Field(() => User) sender: User;
  @Field({ description: 'Empty string once the message is deleted (deletedAt is then set).' })
  body: string;
  @Field(() => String, { nullable: true }) clientMessageId: string | null;
  @Field(() => GraphQLISODateTime) createdAt: Date;
  @Field(() => GraphQLISODateTime, { nullable: true }) editedAt: Date | null;
  @Field(() => GraphQLISODateTime, { nullable: true }) deletedAt: Date | null;
  /** messages.seq (bigint as a decimal string); not exposed, it is the cursor */
  seq: string;
}

@ObjectType()
export class ChatMember {
  @Field(() => User) user: User;
  @Field({ description: 'owner | member' }) role: string;
  @Field(() => GraphQLISODateTime) joinedAt: Date;
}

@ObjectType()
export class Chat {
  @Field(() => ID) id: string;
  @Field(() => String, { nullable: true, description: 'null for direct chats' }) title: string | null;
  @Field() isGroup: boolean;
  @Field(() => GraphQLISODateTime) createdAt: Date;
  @Field(() => GraphQLISODateTime, { description: 'Last activity: creation or newest message.' }) updatedAt: Date;
  // resolved by ChatResolver field resolvers
  @Field(() => [ChatMember]) members?: ChatMember[];
  @Field(() => Message, { nullable: true }) lastMessage?: Message | null;
  @Field(() => Int, { description: "Messages from others after the caller's read marker, not deleted." })
  unreadCount?: number;
}

@ObjectType()
export class MessageEdge {
  @Field() cursor: string;
  @Field(() => Message) node: Message;
}

@ObjectType()
export class PageInfo {
  @Field() hasNextPage: boolean;
  @Field(() => String, { nullable: true }) endCursor: string | null;
}

@ObjectType()
export class MessageConnection {
  @Field(() => [MessageEdge]) edges: MessageEdge[];
  @Field(() => PageInfo) pageInfo: PageInfo;
}

@InputType()
export class CreateChatInput {
  @Field(() => String, { nullable: true })
  @IsOptional()
  @Transform(trim)
  @IsString()
  @Length(1, 128)
  title?: string | null;

  @Field(() => [ID])
  @IsArray()
  @ArrayMinSize(1)
  @ArrayMaxSize(200)
  @IsUUID('all', { each: true })
  memberIds: string[];
}

@InputType()
export class SendMessageInput {
  @Field(() => ID)
  @IsUUID()
  chatId: string;

  @Field()
  @IsString()
  @Length(1, 4000)
  @Matches(/\S/, { message: 'body must not be blank' })
  body: string;

  @Field({ description: 'Client-chosen id; a repeat with the same id returns the first message.' })
  @IsString()
  @Length(1, 128)
  clientMessageId: string;
}
